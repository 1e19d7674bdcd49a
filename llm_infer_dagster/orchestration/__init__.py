"""The only package that imports Dagster: assets, the GPU executor, sensors and schedules, shard
registration, staleness, instance storage, run health, the ``llm-infer`` command and the code location."""
