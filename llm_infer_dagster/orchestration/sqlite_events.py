"""Where ``dagster.yaml`` files of earlier versions find the pooled sqlite event log (``llm-infer`` rewrites
the files it wrote; this keeps an instance started by ``dagster dev`` before that loading). The code lives in
``dagster_internals/sqlite_events.py``."""

from llm_infer_dagster.orchestration.dagster_internals.sqlite_events import PooledSqliteEventLogStorage

__all__ = ["PooledSqliteEventLogStorage"]
