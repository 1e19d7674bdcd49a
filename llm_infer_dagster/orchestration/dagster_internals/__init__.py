"""Where this project leans on Dagster's internals, and only here: pinned to one Dagster minor line.

- ``private.py``: every private Dagster name (``dagster._...``) the project uses, imported once;
- ``gpu_executor.py``: the step-delegating executor that leases GPUs per step;
- ``sqlite_events.py``: the pooled sqlite event log storage an ``llm-infer`` instance uses (batched writes);
- ``planned_checks.py``: a run's planned check rows, one partition each (sqlite and PostgreSQL);
- ``postgres_events.py``: the PostgreSQL event log with those rows (``postgres_instance_yaml`` names it);
- ``event_batches.py``: runless asset events written many to a transaction.

``tests/orchestration/test_dagster_private.py`` keeps an integration test on each.
"""
