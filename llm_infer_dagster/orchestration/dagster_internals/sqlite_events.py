"""Dagster's sqlite event log, keeping its database connections open between writes.

The stock ``SqliteEventLogStorage`` builds a SQLAlchemy engine, opens a connection, commits, closes it and
disposes the engine for every single event, twice (the run's database and the cross-run index). That is
about 13-16 ms an event on our 2-vCPU machine, and a shard records four materializations, so bookkeeping alone
was ~60 ms a shard. This subclass keeps one engine per database file (a bounded LRU: the webserver touches
every run's file), so an event costs about 4 ms; the files, schema and every query are Dagster's own, and a
stock instance reads them unchanged. Engines are never shared across a fork.

``llm-infer`` writes it into the ``dagster.yaml`` of the instances it creates; for another ``DAGSTER_HOME``
add the ``event_log_storage`` block of ``instance_yaml`` (see the README). It subclasses ``dagster._core``
internals (from ``dagster_private``), like the executor: the project pins Dagster's minor version and
``tests/orchestration/test_sqlite_events.py`` checks it against the stock storage.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dagster import AssetKey, DagsterEventType, EventLogEntry, serialize_value
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

from llm_infer_dagster.orchestration.dagster_internals.private import (
    SQLITE_BUSY_TIMEOUT_SECONDS,
    AssetCheckEvaluationPlanned,
    AssetCheckExecutionRecordStatus,
    AssetCheckExecutionsTable,
    SqliteEventLogStorage,
)

MAX_STORED = 10_000  # materializations remembered (their storage ids), for the check evaluations that follow
MAX_ENGINES = 16  # open database files per process: the index, and the runs being written or read


def _relaxed_sync(dbapi_connection: Any, _record: Any) -> None:
    """``synchronous=NORMAL``: in WAL mode (Dagster creates its sqlite files in WAL) a commit then skips the fsync.

    A killed process loses nothing committed (the WAL is in the OS's hands); only a power cut can roll back
    the last commits before a checkpoint, never corrupt the file. Shards whose record is rolled back that way
    are simply made again on resume. About a third of an event's write cost on our machine was that fsync.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


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


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` with one long-lived engine per database file instead of one per write."""

    # inst_data: Dagster's ConfigurableClassData (or None), passed through untouched.
    def __init__(self, base_dir: str, inst_data: Any = None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._tables: set[str] = set()  # schema facts that, once true, stay true
        self._pid = os.getpid()
        # (asset key, partition) -> (storage id, run id, timestamp) of the materializations this process stored
        self._stored: OrderedDict[tuple[AssetKey, str], tuple[int, str, float]] = OrderedDict()
        self._pending = threading.local()  # the one being stored by this thread, kept once its write commits
        super().__init__(base_dir, inst_data)  # connects already (it checks the index's migrations)

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: Any, config_value: Any
    ) -> PooledSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        if os.getpid() != self._pid:  # a forked child must not use its parent's connections
            for inherited in self._engines.values():
                inherited.dispose(close=False)
            self._engines.clear()
            self._pid = os.getpid()
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = create_engine(
            self.conn_string_for_shard(shard),
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=2,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        event.listen(engine, "connect", _relaxed_sync)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        while len(self._engines) > MAX_ENGINES:
            _, oldest = self._engines.popitem(last=False)
            oldest.dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def has_table(self, table_name: str) -> bool:
        """The stock one opens a new engine on every asset event to ask; a table, once there, stays."""
        if table_name in self._tables:
            return True
        found = super().has_table(table_name)  # its own connection: callers may hold the index one (and the lock)
        if found:
            self._tables.add(table_name)
        return found

    def _has_asset_key_index_cols_on_connection(self, conn: Connection) -> bool:
        """Asked (with a schema inspection) on every asset event; columns, once there, stay."""
        if "asset_key_index_cols" in self._tables:
            return True
        found = super()._has_asset_key_index_cols_on_connection(conn)
        if found:
            self._tables.add("asset_key_index_cols")
        return found

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id: int | None) -> None:
        """The planned row of each partition a run will check, holding the planned event narrowed to that partition.

        Dagster's own writer stores the whole planned event, with the run's every partition in it, in each
        partition's row: a run over n shards writes n copies of an n-key list per check. At 2,000 shards that was
        ~120 MB and ~4.5 s per check, before the run's step could start (20 ms at 20 shards). Nothing reads a
        row's subset back (the row has its own ``partition`` column); each row now names just its partition.
        """
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

    def store_event(self, event: EventLogEntry) -> None:
        self._pending.record = None
        super().store_event(event)
        record, self._pending.record = self._pending.record, None
        if record is not None:  # committed: the partition's newest materialization, as far as this process knows
            key, value = record
            self._stored[key] = value
            self._stored.move_to_end(key)
            while len(self._stored) > MAX_STORED:
                self._stored.popitem(last=False)

    def _store_asset_event(self, conn: Connection, event: EventLogEntry, event_id: int) -> None:
        super()._store_asset_event(conn, event, event_id)
        dagster_event = event.dagster_event
        if (
            dagster_event is not None
            and dagster_event.event_type == DagsterEventType.ASSET_MATERIALIZATION
            and dagster_event.asset_key is not None
            and dagster_event.partition is not None
        ):
            self._pending.record = (
                (dagster_event.asset_key, dagster_event.partition),
                (event_id, event.run_id, event.timestamp),
            )

    def stored_materialization(self, asset: AssetKey, partition: str) -> tuple[int, str, float] | None:
        """(storage id, run id, timestamp) of the materialization of ``asset``'s ``partition`` that this process
        stored last, if any: what a check evaluation just after it judges, without a query per shard."""
        return self._stored.get((asset, partition))

    def _dispose_engines(self) -> None:
        with self._db_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()

    def wipe(self) -> None:
        self._dispose_engines()  # the run files are deleted: no connection may outlive them
        self._tables.clear()
        super().wipe()

    def delete_events(self, run_id: str) -> None:
        super().delete_events(run_id)
        self._dispose_engines()

    def dispose(self) -> None:
        self._dispose_engines()
        super().dispose()


# Dagster's run monitoring (the daemon, under `dagster dev` or `dagster-daemon run`): fails runs stuck starting
# or cancelling. The default run launcher cannot check a started run's worker; run_health.py covers that case.
RUN_MONITORING_YAML = (
    "run_monitoring:\n  enabled: true\n  start_timeout_seconds: 300\n  cancel_timeout_seconds: 300\n"
    "  max_resume_run_attempts: 0\n  poll_interval_seconds: 60\n"
)


def instance_yaml(home: Path, *, run_monitoring: bool = True) -> str:
    """The ``dagster.yaml`` ``llm-infer`` writes for a new instance at ``home``: sqlite, pooled event log.

    ``run_monitoring=False`` gives what earlier versions wrote (upgraded in place by the CLI).
    """
    return (
        "telemetry:\n  enabled: false\n"
        "event_log_storage:\n"
        f"  module: {__name__}\n"
        f"  class: {PooledSqliteEventLogStorage.__name__}\n"
        "  config:\n"
        f"    base_dir: {home.resolve() / 'history' / 'runs'}\n"
    ) + (RUN_MONITORING_YAML if run_monitoring else "")
