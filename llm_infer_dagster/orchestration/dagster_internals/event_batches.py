"""Write many asset events to the Dagster instance at once: one transaction for a whole batch.

Registering 2,000 shards records 2,000 input observations. Through ``report_runless_asset_event`` each is its
own write (on sqlite: two connections and two commits, about 16 ms), so registration time was mostly
bookkeeping. Dagster's own batch call, ``store_event_batch``, is real on Postgres but loops one event at a time
on sqlite; for sqlite this writes the same rows ``SqliteEventLogStorage.store_event`` writes, in one
transaction per database file. These are ``dagster._core`` internals, imported from ``dagster_internals.private``
(the project pins Dagster's minor version); ``tests/orchestration/test_event_batches.py`` checks that the events
read back exactly as single writes do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from dagster import (
    AssetMaterialization,
    AssetObservation,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    EventLogEntry,
)

from llm_infer_dagster.orchestration.dagster_internals.private import (
    RUNLESS_JOB_NAME,
    RUNLESS_RUN_ID,
    AssetObservationData,
    SqliteEventLogStorage,
    StepMaterializationData,
    db_result,
)

BATCH = 500  # events per transaction: bounded memory and lock time, and few commits


def runless_entry(event: AssetObservation | AssetMaterialization) -> EventLogEntry:
    """The log entry ``instance.report_runless_asset_event(event)`` would store."""
    data: StepMaterializationData | AssetObservationData
    if isinstance(event, AssetMaterialization):
        kind, data = DagsterEventType.ASSET_MATERIALIZATION.value, StepMaterializationData(event)
    else:
        kind, data = DagsterEventType.ASSET_OBSERVATION.value, AssetObservationData(event)
    dagster_event = DagsterEvent(event_type_value=kind, event_specific_data=data, job_name=RUNLESS_JOB_NAME)
    return EventLogEntry(
        user_message="",
        level=logging.INFO,
        job_name=RUNLESS_JOB_NAME,
        run_id=RUNLESS_RUN_ID,
        error_info=None,
        timestamp=time.time(),
        step_key=None,
        dagster_event=dagster_event,
    )


def report_runless_asset_events(
    instance: DagsterInstance, events: Sequence[AssetObservation | AssetMaterialization]
) -> None:
    """``report_runless_asset_event`` for each of ``events``, in order, in as few transactions as the storage
    allows."""
    entries = [runless_entry(e) for e in events]
    storage = instance.event_log_storage
    for i in range(0, len(entries), BATCH):
        chunk = entries[i : i + BATCH]
        if isinstance(storage, SqliteEventLogStorage):
            _store_sqlite(storage, chunk)
        else:
            storage.store_event_batch(chunk)  # Postgres and MySQL write a batch in one statement


def _store_sqlite(storage: SqliteEventLogStorage, entries: Sequence[EventLogEntry]) -> None:
    """What ``SqliteEventLogStorage.store_event`` does for asset events, one transaction per database."""
    with storage.run_connection(RUNLESS_RUN_ID) as conn:
        for entry in entries:
            conn.execute(storage.prepare_insert_event(entry))
    with storage.index_transaction() as conn:
        ids: list[int] = []
        for entry in entries:
            with db_result(conn, storage.prepare_insert_event(entry)) as result:
                ids.append(int(result.inserted_primary_key[0]))
        storage._store_asset_event_tags(conn, entries, ids)  # noqa: SLF001 - the storage's own writer
        for entry, event_id in zip(entries, ids, strict=True):
            storage._store_asset_event(conn, entry, event_id)  # noqa: SLF001
