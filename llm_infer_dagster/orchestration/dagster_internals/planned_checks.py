"""A run's planned check rows, each holding the planned event narrowed to its own partition.

For a partitioned asset check, Dagster stores one ``asset_check_executions`` row per partition a run will
check, and each row holds the whole planned event, whose partition subset lists every partition of the run: a
run over n shards writes n copies of an n-key list per check (at 2,000 shards ~120 MB and seconds per check,
before the run's step can start). Nothing reads a row's subset back (the row has its own ``partition``
column), so each row here names just its own. Mixed into the pooled sqlite event log (``sqlite_events.py``) and
the PostgreSQL one (``postgres_events.py``); ``tests/orchestration/test_sqlite_events.py`` and
``test_postgres.py`` check that the statuses read back as the stock storages'.
"""

from __future__ import annotations

import json

from dagster import EventLogEntry, serialize_value

from llm_infer_dagster.orchestration.dagster_internals.private import (
    AssetCheckEvaluationPlanned,
    AssetCheckExecutionRecordStatus,
    AssetCheckExecutionsTable,
    SqlEventLogStorage,
)

_SLOT = "llm-infer:partition-key"  # stands for a row's partition in a planned check event serialized once


def _narrowed(event: EventLogEntry, key: str) -> str:
    """``event`` (a planned check over many partitions) serialized as planned for ``key`` alone."""
    dagster_event = event.get_dagster_event()
    planned = dagster_event.event_specific_data
    assert isinstance(planned, AssetCheckEvaluationPlanned) and planned.partitions_subset is not None
    one = AssetCheckEvaluationPlanned(
        asset_key=planned.asset_key,
        check_name=planned.check_name,
        partitions_subset=planned.partitions_subset.empty_subset().with_partition_keys([key]),
    )
    return serialize_value(event._replace(dagster_event=dagster_event._replace(event_specific_data=one)))


class NarrowedPlannedChecks(SqlEventLogStorage):
    """Dagster's SQL event log, its planned check rows written narrowed (a base to put before the storage's own
    class: ``class X(NarrowedPlannedChecks, PostgresEventLogStorage)``)."""

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id: int | None) -> None:
        """The planned row of each partition a run will check, holding the planned event narrowed to it."""
        dagster_event = event.get_dagster_event()
        planned = dagster_event.event_specific_data
        if not isinstance(planned, AssetCheckEvaluationPlanned) or planned.partitions_subset is None:
            super()._store_asset_check_evaluation_planned(event, event_id)
            return
        subset = planned.partitions_subset
        asset, name, when = planned.asset_key, planned.check_name, self._event_insert_timestamp(event)
        narrowed = AssetCheckEvaluationPlanned(
            asset_key=asset, check_name=name, partitions_subset=subset.empty_subset().with_partition_keys([_SLOT])
        )
        # Serialized once, the partition put in per row: 2,000 serializations took ~1 s a check on a busy box.
        template = serialize_value(event._replace(dagster_event=dagster_event._replace(event_specific_data=narrowed)))
        slot = json.dumps(_SLOT)
        exact = template.count(slot) == 1
        rows = [
            {
                "asset_key": asset.to_string(),
                "check_name": name,
                "partition": key,
                "run_id": event.run_id,
                "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
                "evaluation_event": template.replace(slot, json.dumps(key)) if exact else _narrowed(event, key),
                "evaluation_event_timestamp": when,
                "evaluation_event_storage_id": event_id,
            }
            for key in subset.get_partition_keys()
        ]
        if rows:
            with self.index_connection() as conn:
                conn.execute(AssetCheckExecutionsTable.insert().values(rows))
