"""The seed's contract, without Dagster or engines: task folders and their four functions, sampling parameters,
``task_settings.json``, code versions, and the seed's command-line flags."""
