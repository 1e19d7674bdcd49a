"""Dagster's sqlite event log, keeping its database connections open between writes.

The stock ``SqliteEventLogStorage`` builds a SQLAlchemy engine, opens a connection, commits, closes it and
disposes the engine for every single event, twice (the run's database and the cross-run index). That is
about 13-16 ms an event on our 2-vCPU machine, and a shard records four materializations, so bookkeeping alone
was ~60 ms a shard. This subclass keeps one engine per database file (a bounded LRU: the webserver touches
every run's file), so an event costs about 4 ms; the files, schema and every query are Dagster's own, and a
stock instance reads them unchanged. Engines are never shared across a fork.

Asset and check events go through one writer, :meth:`PooledSqliteEventLogStorage.store_event_batch`: a batch's rows
in one transaction per database file, written by Dagster's own row writers (the stock storage loops
``store_event``, and a check evaluation alone took three transactions: the run's file, the index, the index
again). Inside :meth:`~PooledSqliteEventLogStorage.holding_check_evaluations` a thread's check evaluations are
held and written as one batch when it ends, so a step logging a shard's checks through ``context.log_event``
commits them together.

``llm-infer`` writes it into the ``dagster.yaml`` of the instances it creates; for another ``DAGSTER_HOME``
add the ``event_log_storage`` block of ``instance_yaml`` (see the README). It subclasses ``dagster._core``
internals (from ``dagster_private``), like the executor: the project pins Dagster's minor version and
``tests/orchestration/test_sqlite_events.py`` checks it against the stock storage.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dagster import AssetKey, DagsterEventType, DagsterInvariantViolationError, EventLogEntry
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

from llm_infer_dagster.orchestration.dagster_internals.planned_checks import NarrowedPlannedChecks
from llm_infer_dagster.orchestration.dagster_internals.private import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    AssetKeyTable,
    SqliteEventLogStorage,
    db_result,
)

MAX_STORED = 10_000  # materializations remembered (their storage ids), for the check evaluations that follow
MAX_ENGINES = 16  # open database files per process: the index, and the runs being written or read
MAX_HELD = 500  # check evaluations held before a hold writes them anyway (bounded memory and lock time)
# What store_event_batch writes itself: events whose rows are the run's file and the index's asset or check
# tables. The others (run status changes, logs) keep the stock store_event.
_BATCHED = frozenset(
    {
        DagsterEventType.ASSET_MATERIALIZATION,
        DagsterEventType.ASSET_OBSERVATION,
        DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
        DagsterEventType.ASSET_FAILED_TO_MATERIALIZE,
        DagsterEventType.ASSET_CHECK_EVALUATION,
        DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
    }
)


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


def _batched(event: EventLogEntry) -> bool:
    return event.dagster_event is not None and event.dagster_event.event_type in _BATCHED


class PooledSqliteEventLogStorage(NarrowedPlannedChecks, SqliteEventLogStorage):
    """``SqliteEventLogStorage`` with one long-lived engine per database file instead of one per write, and a
    run's planned check rows each narrowed to its own partition (``planned_checks.py``)."""

    # inst_data: Dagster's ConfigurableClassData (or None), passed through untouched.
    def __init__(self, base_dir: str, inst_data: Any = None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._tables: set[str] = set()  # schema facts that, once true, stay true
        self._pid = os.getpid()
        # (asset key, partition) -> (storage id, run id, timestamp) of the materializations this process stored
        self._stored: OrderedDict[tuple[AssetKey, str], tuple[int, str, float]] = OrderedDict()
        self._pending = threading.local()  # .records: those being stored by this thread, kept once they commit
        self._stored_up_to = 0  # the newest storage id of an asset or check event this process committed
        self._open = threading.local()  # .conns: shard -> this thread's connection inside a batch's transaction
        self._held = threading.local()  # .events: this thread's check evaluations held for one batch, or None
        super().__init__(base_dir, inst_data)  # connects already (it checks the index's migrations)
        # Reentrant: inside a batch's index transaction, a row writer opening another file's connection (none
        # does in 1.13) waits for no one instead of for itself.
        self._db_lock = threading.RLock()  # type: ignore[assignment]

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
        """A connection in a transaction, committed at the end; inside a batch, the batch's own (no commit).

        Dagster's row writers open their own index connection; in a batch they join its transaction.
        """
        conns: dict[str, Connection] = getattr(self._open, "conns", None) or {}
        joined = conns.get(shard)
        if joined is not None:
            yield joined
            return
        with self._db_lock:
            engine = self._engine(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    @contextmanager
    def _transaction(self, shard: str) -> Iterator[Connection]:
        """One transaction on ``shard`` that the row writers called inside it join."""
        with self._connect(shard) as conn:
            conns = getattr(self._open, "conns", None)
            if conns is None:
                conns = self._open.conns = {}
            conns[shard] = conn
            try:
                yield conn
            finally:
                del conns[shard]

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

    def store_event(self, event: EventLogEntry) -> None:
        if _batched(event):
            held: list[EventLogEntry] | None = getattr(self._held, "events", None)
            if held is not None and event.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
                held.append(event)
                if len(held) >= MAX_HELD:
                    self._flush_held()
                return
            self._store_batch([event])
        else:
            super().store_event(event)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """The stock one stores each event on its own; asset and check events are written here together."""
        if events and all(_batched(e) for e in events):
            self._store_batch(events)
        else:
            super().store_event_batch(events)

    @contextmanager
    def holding_check_evaluations(self) -> Iterator[None]:
        """Check evaluations this thread stores inside are written at the end, as one batch (two transactions).

        Meant for a few evaluations logged one after another (a shard's checks): nothing reads them back inside,
        and they are written even when the block raises. Nested holds write at the outermost one's end.
        """
        if getattr(self._held, "events", None) is not None:
            yield
            return
        self._held.events = []
        try:
            yield
        finally:
            try:
                self._flush_held()
            finally:
                self._held.events = None

    def _flush_held(self) -> None:
        held: list[EventLogEntry] = self._held.events
        if held:
            batch = list(held)
            held.clear()
            self._store_batch(batch)

    def _store_batch(self, events: Sequence[EventLogEntry]) -> None:
        """What ``SqliteEventLogStorage.store_event`` writes for each of ``events``, in order, in one transaction
        per database file (each run's file, then the index), by the same writers."""
        inserts = [self.prepare_insert_event(e) for e in events]  # one serialization each, for both files
        for run_id in dict.fromkeys(e.run_id for e in events):
            with self.run_connection(run_id) as conn:
                for e, insert in zip(events, inserts, strict=True):
                    if e.run_id == run_id:
                        conn.execute(insert)
        self._pending.records = []
        newest = None
        with self._transaction(INDEX_SHARD_NAME) as conn:
            for e, insert in zip(events, inserts, strict=True):
                with db_result(conn, insert) as result:
                    event_id = result.inserted_primary_key[0]
                newest = event_id if event_id is not None else newest
                if e.dagster_event_type in (
                    DagsterEventType.ASSET_CHECK_EVALUATION,
                    DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
                ):
                    self.store_asset_check_event(e, event_id)  # its writers join this transaction
                    continue
                if event_id is None:
                    raise DagsterInvariantViolationError("Cannot store asset event tags for null event id.")
                self._store_asset_event_tags(conn, [e], [event_id])
                self._store_asset_event(conn, e, event_id)
        self._stored_up_to = max(self._stored_up_to, newest or 0)
        records, self._pending.records = self._pending.records, []
        for key, value in records:  # committed: each partition's newest materialization, as far as we know
            self._stored[key] = value
            self._stored.move_to_end(key)
        while len(self._stored) > MAX_STORED:
            self._stored.popitem(last=False)

    def _store_asset_event(self, conn: Connection, event: EventLogEntry, event_id: int) -> None:
        """Dagster's asset row for ``event``, updated first: the stock writer tries an INSERT that fails with an
        IntegrityError for every materialization of an asset that has a row (all but its first), then updates."""
        dagster_event = event.dagster_event
        if dagster_event is None or dagster_event.asset_key is None:
            return
        values = self._get_asset_entry_values(event, event_id, self._has_asset_key_index_cols_on_connection(conn))
        if values:
            key = dagster_event.asset_key.to_string()
            # The UPDATE takes sqlite's write lock, held to the commit: no other writer can add the row between.
            updated = conn.execute(AssetKeyTable.update().values(**values).where(AssetKeyTable.c.asset_key == key))
            if updated.rowcount == 0:
                conn.execute(AssetKeyTable.insert().values(asset_key=key, **values))
        records: list[Any] | None = getattr(self._pending, "records", None)
        if (
            records is not None
            and dagster_event.event_type == DagsterEventType.ASSET_MATERIALIZATION
            and dagster_event.partition is not None
        ):
            records.append(
                ((dagster_event.asset_key, dagster_event.partition), (event_id, event.run_id, event.timestamp))
            )

    def stored_up_to(self) -> int:
        """The newest storage id of an asset or check event this process has committed (0: none yet).

        A step's records of what it made are at or below it, without the ``MAX(id)`` query a shard's event
        pointer took four times a shard (``DagsterSink.making``)."""
        return self._stored_up_to

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
