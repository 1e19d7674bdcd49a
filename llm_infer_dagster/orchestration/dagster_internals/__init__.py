"""Where this project leans on Dagster's internals, and only here: pinned to one Dagster minor line.

- ``private.py``: every private Dagster name (``dagster._...``) the project uses, imported once;
- ``gpu_executor.py``: the step-delegating executor that leases GPUs per step;
- ``sqlite_events.py``: the pooled sqlite event log storage an ``llm-infer`` instance uses;
- ``event_batches.py``: runless asset events written many to a transaction.

``tests/orchestration/test_dagster_private.py`` keeps an integration test on each.
"""
