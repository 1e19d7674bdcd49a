"""The pooled sqlite event log writes what Dagster's stock one reads, and the other way round."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetCheckKey, AssetKey, AssetObservation, DagsterInstance

from llm_infer_dagster.orchestration.cli import OLD_INSTANCE_YAML, _prepare_instance
from llm_infer_dagster.orchestration.dagster_internals import sqlite_events
from llm_infer_dagster.orchestration.dagster_internals.private import (
    AssetCheckEvaluationPlanned,
    AssetCheckExecutionRecordStatus,
    SqliteEventLogStorage,
)
from llm_infer_dagster.orchestration.dagster_internals.sqlite_events import PooledSqliteEventLogStorage, instance_yaml


def _instance(home: Path, pooled: bool) -> DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(instance_yaml(home) if pooled else OLD_INSTANCE_YAML)
    return DagsterInstance.from_config(str(home))


def _observe(instance: DagsterInstance, key: AssetKey, partitions: list[str]) -> None:
    for p in partitions:
        instance.report_runless_asset_event(AssetObservation(asset_key=key, partition=p, metadata={"n": 1}))


def test_pooled_and_stock_storages_share_one_instance(tmp_path: Path) -> None:
    home, key = tmp_path / "home", AssetKey(["t", "input"])
    pooled = _instance(home, pooled=True)
    assert isinstance(pooled.event_log_storage, PooledSqliteEventLogStorage)
    _observe(pooled, key, ["a", "b"])
    stock = _instance(home, pooled=False)
    assert type(stock.event_log_storage) is SqliteEventLogStorage
    assert {r.partition_key for r in stock.fetch_observations(key, limit=10).records} == {"a", "b"}
    _observe(stock, key, ["c"])
    assert {r.partition_key for r in pooled.fetch_observations(key, limit=10).records} == {"a", "b", "c"}


def test_open_databases_are_bounded_dropped_after_a_fork_and_after_a_wipe(tmp_path: Path, monkeypatch) -> None:
    storage = PooledSqliteEventLogStorage(str(tmp_path / "runs"))
    monkeypatch.setattr(sqlite_events, "MAX_ENGINES", 3)
    for i in range(6):
        with storage.run_connection(f"run{i}"):
            pass
    assert len(storage._engines) == 3  # noqa: SLF001 - the pool is the thing under test
    real_pid = os.getpid()
    monkeypatch.setattr(sqlite_events.os, "getpid", lambda: real_pid + 1)  # as if in a forked child
    with storage.index_connection():
        pass
    assert list(storage._engines) == ["index"]  # noqa: SLF001 - the parent's connections were not reused
    monkeypatch.undo()
    with storage.run_connection("run1"):
        pass
    storage.wipe()  # deletes the run files: no connection to them may survive (the index is kept)
    assert list(storage._engines) == ["index"]  # noqa: SLF001
    with storage.run_connection("run0"):  # and it works after the wipe
        pass


def test_llm_infer_writes_the_pooled_config_only_where_it_owns_the_file(tmp_path: Path, monkeypatch) -> None:
    cases = (
        ("new", None),
        ("old", OLD_INSTANCE_YAML),
        ("unmonitored", False),
        ("top_level_module", "top"),  # written before the event log moved into orchestration/
        ("orchestration_module", "orch"),  # written before it moved into orchestration/dagster_internals/
        ("theirs", "telemetry:\n  enabled: true\n"),
    )
    for case, before in cases:
        out = tmp_path / case
        home = out / ".dagster"
        if before is not None:
            home.mkdir(parents=True)
            text = instance_yaml(home.resolve(), run_monitoring=False) if before is False else before
            if before in ("top", "orch"):
                old_module = (
                    "llm_infer_dagster.sqlite_events" if before == "top" else "llm_infer_dagster.orchestration."
                )
                text = instance_yaml(home.resolve()).replace(
                    "llm_infer_dagster.orchestration.dagster_internals.sqlite_events",
                    old_module + ("sqlite_events" if before == "orch" else ""),
                )
            (home / "dagster.yaml").write_text(text)
        monkeypatch.delenv("DAGSTER_HOME", raising=False)
        _prepare_instance(out)
        assert os.environ["DAGSTER_HOME"] == str(home.resolve())
        text = (home / "dagster.yaml").read_text()
        assert (text == instance_yaml(home.resolve())) == (case != "theirs"), case
        if case != "theirs":  # run monitoring is on, and Dagster accepts the file
            instance = DagsterInstance.get()
            assert instance.run_monitoring_enabled
            instance.dispose()
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


@pytest.mark.parametrize("pooled", [True, False])
def test_a_run_sharded_write_reads_back(tmp_path: Path, pooled: bool) -> None:
    instance = _instance(tmp_path / "home", pooled)
    _observe(instance, AssetKey("x"), ["p"])
    assert instance.get_latest_data_version_record(AssetKey("x"), True, "p") is not None


def test_pooled_connections_are_wal_with_normal_sync(tmp_path: Path) -> None:
    """Dagster makes its files WAL; the pooled log's connections skip the per-commit fsync (synchronous=NORMAL)."""
    instance = _instance(tmp_path / "home", pooled=True)
    _observe(instance, AssetKey("x"), ["p"])
    storage = instance.event_log_storage
    with storage.index_connection() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL (the default, FULL, is 2)


def _planned_check_run(storage: SqliteEventLogStorage, keys: list[str]) -> AssetCheckKey:
    """What creating a run over ``keys`` stores for one partitioned check, then one shard's evaluation."""
    from dagster import AssetCheckEvaluation, DagsterEvent, DagsterEventType, DynamicPartitionsDefinition, EventLogEntry

    check_key = AssetCheckKey(AssetKey(["t", "completions"]), "error_rows")
    subset = DynamicPartitionsDefinition(name="shards").empty_subset().with_partition_keys(keys)
    planned = AssetCheckEvaluationPlanned(
        asset_key=check_key.asset_key, check_name="error_rows", partitions_subset=subset
    )
    evaluation = AssetCheckEvaluation(asset_key=check_key.asset_key, check_name="error_rows", passed=False,
                                      partition=keys[1], metadata={"share": 0.5})  # fmt: skip
    for kind, data in ((DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED, planned),
                       (DagsterEventType.ASSET_CHECK_EVALUATION, evaluation)):  # fmt: skip
        event = DagsterEvent(event_type_value=kind.value, job_name="t_job", event_specific_data=data, step_key="s")
        entry = EventLogEntry(user_message="", level=logging.DEBUG, job_name="t_job", run_id="run1",
                              error_info=None, timestamp=1.0, step_key="s", dagster_event=event)  # fmt: skip
        storage.store_event(entry)
    return check_key


def test_a_runs_planned_checks_store_one_partition_per_row_and_read_back_as_stock(tmp_path: Path) -> None:
    """Dagster stores the run's whole partition list in every partition's planned row (n² at n shards); the
    pooled storage stores each row's own partition, and the statuses read back as the stock storage's do."""
    keys = [f"shard-{i:04d}" for i in range(300)] + ['a "quoted" \\ shard', "café-ünïcode"]
    seen = {}
    for name, cls in (("stock", SqliteEventLogStorage), ("pooled", PooledSqliteEventLogStorage)):
        storage = cls(str(tmp_path / name))
        check_key = _planned_check_run(storage, keys)
        records = storage.get_asset_check_execution_history(check_key, limit=1000)
        seen[name] = {(r.partition, r.run_id, r.status) for r in records}
        planned_rows = [r for r in records if r.status == AssetCheckExecutionRecordStatus.PLANNED]
        subsets = {r.partition: r.event.get_dagster_event().event_specific_data.partitions_subset for r in planned_rows}
        if name == "pooled":
            assert all(list(s.get_partition_keys()) == [k] for k, s in subsets.items())  # its own partition, no more
        else:
            assert all(len(s.get_partition_keys()) == len(keys) for s in subsets.values())
        storage.dispose()
    assert seen["pooled"] == seen["stock"]
    assert len(seen["pooled"]) == len(keys)
    assert (keys[1], "run1", AssetCheckExecutionRecordStatus.FAILED) in seen["pooled"]


def test_a_check_targets_the_materialization_just_stored_without_a_query(tmp_path: Path, monkeypatch) -> None:
    """The step's evaluations judge the shard's materialization it just wrote: the pooled storage remembers its
    storage id (what a query per shard used to fetch), and only a committed write is remembered."""
    from dagster import AssetMaterialization, DagsterEvent, DagsterEventType, EventLogEntry

    from llm_infer_dagster.orchestration.assets.checks import latest_target
    from llm_infer_dagster.orchestration.dagster_internals.private import StepMaterializationData

    instance, key = _instance(tmp_path / "home", pooled=True), AssetKey(["t", "completions"])
    storage = instance.event_log_storage
    assert isinstance(storage, PooledSqliteEventLogStorage)

    def store(shard: str, run_id: str) -> None:
        data = StepMaterializationData(AssetMaterialization(asset_key=key, partition=shard))
        event = DagsterEvent(DagsterEventType.ASSET_MATERIALIZATION.value, "t_job", event_specific_data=data)
        storage.store_event(EventLogEntry(user_message="", level=logging.INFO, job_name="t_job", run_id=run_id,
                                          error_info=None, timestamp=2.0, dagster_event=event))  # fmt: skip

    for run_id in ("run1", "run2"):
        store("a", run_id)
    store("b", "run1")
    latest = instance.fetch_materializations(key, limit=10).records
    expected = {r.partition_key: (r.storage_id, r.run_id, r.timestamp) for r in reversed(latest)}  # newest wins
    assert expected["a"][1] == "run2"
    monkeypatch.setattr(instance, "fetch_materializations", lambda *a, **k: pytest.fail("queried"))
    for shard in ("a", "b"):
        target = latest_target(instance, key, shard)
        assert target is not None and (target.storage_id, target.run_id, target.timestamp) == expected[shard]
    monkeypatch.undo()

    def then_fail(conn: object, event: object, event_id: int) -> None:
        PooledSqliteEventLogStorage._store_asset_event(storage, conn, event, event_id)  # noqa: SLF001
        raise RuntimeError("disk full")  # the index transaction rolls back after the row was written

    monkeypatch.setattr(storage, "_store_asset_event", then_fail)
    with pytest.raises(RuntimeError):
        store("a", "run3")
    assert storage.stored_materialization(key, "a")[1] == "run2"  # the rolled-back one is not remembered
    assert storage.stored_materialization(key, "c") is None  # never stored here: latest_target queries


def _entry(kind: Any, data: Any, run_id: str = "run1", when: float = 1.0) -> Any:
    from dagster import DagsterEvent, EventLogEntry

    event = DagsterEvent(event_type_value=kind.value, job_name="t_job", event_specific_data=data, step_key="s")
    return EventLogEntry(user_message="", level=logging.DEBUG, job_name="t_job", run_id=run_id, error_info=None,
                         timestamp=when, step_key="s", dagster_event=event)  # fmt: skip


CHECKS = ("error_rows", "empty_completions", "cut_at_max_tokens")


def _a_shard_with_checks(storage: SqliteEventLogStorage, hold: bool, commits: list[str]) -> list[AssetCheckKey]:
    """A run planned over three shards stores shard b's materialization and its three check evaluations
    (one fails), the evaluations held as one batch when ``hold``; ``commits`` is cleared before them."""
    from dagster import (
        AssetCheckEvaluation,
        AssetMaterialization,
        DagsterEventType,
        DynamicPartitionsDefinition,
        EventRecordsFilter,
    )

    from llm_infer_dagster.orchestration.dagster_internals.private import (
        AssetCheckEvaluationTargetMaterializationData,
        StepMaterializationData,
    )

    asset = AssetKey(["t", "completions"])
    subset = DynamicPartitionsDefinition(name="shards").empty_subset().with_partition_keys(["a", "b", "c"])
    for name in CHECKS:
        planned = AssetCheckEvaluationPlanned(asset_key=asset, check_name=name, partitions_subset=subset)
        storage.store_event(_entry(DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED, planned))
    mat = StepMaterializationData(AssetMaterialization(asset_key=asset, partition="b", metadata={"rows": 3}))
    storage.store_event(_entry(DagsterEventType.ASSET_MATERIALIZATION, mat, when=2.0))
    record = storage.get_event_records(EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION, asset), limit=1)[0]
    target = AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id="run1", timestamp=record.timestamp
    )
    evaluations = [
        _entry(DagsterEventType.ASSET_CHECK_EVALUATION, AssetCheckEvaluation(
            asset_key=asset, check_name=name, passed=name != "empty_completions", partition="b",
            metadata={"share": 0.5}, target_materialization_data=target), when=3.0 + i)
        for i, name in enumerate(CHECKS)
    ]  # fmt: skip
    commits.clear()
    if hold:
        assert isinstance(storage, PooledSqliteEventLogStorage)
        with storage.holding_check_evaluations():
            for e in evaluations:
                storage.store_event(e)
            assert commits == []  # held: nothing written yet
            latest = storage.get_asset_check_execution_history(AssetCheckKey(asset, "error_rows"), limit=5)[0]
            assert latest.status == AssetCheckExecutionRecordStatus.PLANNED
            commits.clear()  # the read's own
    else:
        for e in evaluations:
            storage.store_event(e)
    return [AssetCheckKey(asset, name) for name in CHECKS]


def _check_reads(storage: SqliteEventLogStorage, keys: list[AssetCheckKey]) -> dict[str, object]:
    """What Dagster's UI and sensors read of the checks, as plain values (the planned rows' events aside:
    the pooled log narrows them)."""
    from dagster import serialize_value
    from dagster._core.event_api import PartitionKeyFilter  # a read API's argument, tests only

    def rec(r: Any) -> tuple:
        done = r.status != AssetCheckExecutionRecordStatus.PLANNED
        return (r.key, r.id, r.run_id, r.status, r.partition, serialize_value(r.event) if done else None)

    history = {k: [rec(r) for r in storage.get_asset_check_execution_history(k, limit=10)] for k in keys}
    latest = {
        p: {k: rec(r) for k, r in storage.get_latest_asset_check_execution_by_key(
            keys, partition_filter=PartitionKeyFilter(key=p)).items()}
        for p in ("a", "b")
    }  # fmt: skip
    infos = [
        (i.check_key.name, i.partition_key, i.latest_execution_status, i.latest_planned_run_id,
         i.latest_check_event_storage_id, i.latest_materialization_storage_id,
         i.latest_target_materialization_storage_id, i.is_current)
        for i in storage.get_asset_check_partition_info(keys)
    ]  # fmt: skip
    infos.sort(key=lambda i: (i[0], i[1] or ""))
    summaries = {
        k: (rec(s.last_check_execution_record), rec(s.last_completed_check_execution_record), s.last_run_id)
        for k, s in storage.get_asset_check_summary_records(keys).items()
    }
    run = [
        (r.storage_id, r.event_log_entry.dagster_event_type, serialize_value(r.event_log_entry))
        for r in storage.get_records_for_run("run1").records
    ]
    return {"history": history, "latest": latest, "infos": infos, "summaries": summaries, "run": run}


def test_held_check_evaluations_land_in_two_transactions_and_read_back_as_stock(tmp_path: Path) -> None:
    """A shard's evaluations, held and written as one batch, read back exactly as the stock storage's one at a
    time: statuses, the materialization each targets, the records the UI's check view and partition status read."""
    from sqlalchemy import event as sa_event
    from sqlalchemy.engine import Connection as SaConnection

    commits: list[str] = []

    def on_commit(conn: SaConnection) -> None:
        commits.append(Path(str(conn.engine.url.database)).stem)

    reads = {}
    for name, cls, hold in (("stock", SqliteEventLogStorage, False), ("pooled", PooledSqliteEventLogStorage, True)):
        storage = cls(str(tmp_path / name))
        sa_event.listen(SaConnection, "commit", on_commit)
        try:
            keys = _a_shard_with_checks(storage, hold, commits)
        finally:
            sa_event.remove(SaConnection, "commit", on_commit)
        reads[name] = _check_reads(storage, keys)
        if hold:
            assert sorted(commits) == ["index", "run1"]
        else:
            assert commits == ["run1", "index", "index"] * 3  # each: the run's file, the index, the index again
        storage.dispose()
    assert reads["pooled"] == reads["stock"]
    infos = {(i[0], i[1]): i for i in reads["pooled"]["infos"]}  # type: ignore[union-attr]
    assert infos[("empty_completions", "b")][2] == AssetCheckExecutionRecordStatus.FAILED
    assert infos[("error_rows", "b")][2] == AssetCheckExecutionRecordStatus.SUCCEEDED
    assert infos[("error_rows", "b")][-1] is True  # it judged the shard's latest materialization
    assert infos[("error_rows", "a")][2] == AssetCheckExecutionRecordStatus.PLANNED


def test_a_hold_writes_what_it_holds_when_the_block_raises_and_nests(tmp_path: Path) -> None:
    from dagster import AssetCheckEvaluation, DagsterEventType

    storage = PooledSqliteEventLogStorage(str(tmp_path / "runs"))
    key = AssetCheckKey(AssetKey("x"), "c")

    def evaluate(passed: bool) -> None:
        data = AssetCheckEvaluation(asset_key=key.asset_key, check_name="c", passed=passed)
        storage.store_event(_entry(DagsterEventType.ASSET_CHECK_EVALUATION, data))

    with pytest.raises(RuntimeError), storage.holding_check_evaluations():
        with storage.holding_check_evaluations():
            evaluate(True)
        assert storage.get_asset_check_execution_history(key, limit=5) == []  # the outer hold still holds it
        raise RuntimeError("the step failed")
    assert [r.status for r in storage.get_asset_check_execution_history(key, limit=5)] == [
        AssetCheckExecutionRecordStatus.SUCCEEDED
    ]
    evaluate(False)  # no hold: written at once
    assert storage.get_asset_check_execution_history(key, limit=1)[0].status == AssetCheckExecutionRecordStatus.FAILED


def test_a_mixed_batch_reads_back_as_single_writes(tmp_path: Path) -> None:
    """``store_event_batch`` (Dagster calls it under ``DAGSTER_EVENT_BATCH_SIZE``): asset and check events in one
    transaction per file, anything else (a run's status, a log line) stored on its own, all as the stock one."""
    from dagster import AssetMaterialization, DagsterEventType, EventLogEntry

    from llm_infer_dagster.orchestration.dagster_internals.private import DATA_VERSION_TAG, StepMaterializationData

    def entries() -> list[EventLogEntry]:
        mats = [
            _entry(DagsterEventType.ASSET_MATERIALIZATION, StepMaterializationData(
                AssetMaterialization(AssetKey("m"), partition=p, tags={DATA_VERSION_TAG: p})), when=float(i))
            for i, p in enumerate(["a", "b", "a"])
        ]  # fmt: skip
        log = EventLogEntry(user_message="hello", level=logging.INFO, job_name="t_job", run_id="run1",
                            error_info=None, timestamp=5.0)  # fmt: skip
        return [*mats, log, _entry(DagsterEventType.RUN_START, None, when=6.0)]

    seen = {}
    for name, cls in (("stock", SqliteEventLogStorage), ("pooled", PooledSqliteEventLogStorage)):
        storage = cls(str(tmp_path / name))
        storage.store_event_batch(entries()[:3])  # all batchable
        storage.store_event_batch(entries())  # mixed
        seen[name] = (
            [(r.storage_id, r.event_log_entry) for r in storage.get_records_for_run("run1").records],
            [(r.storage_id, r.partition_key) for r in storage.fetch_materializations(AssetKey("m"), limit=10).records],
            storage.get_latest_tags_by_partition(
                AssetKey("m"), DagsterEventType.ASSET_MATERIALIZATION, [DATA_VERSION_TAG]
            ),
            storage.get_latest_storage_id_by_partition(AssetKey("m"), DagsterEventType.ASSET_MATERIALIZATION),
            # The asset's row (the UI's asset list): the pooled log updates it first, the stock one inserts first.
            [
                (r.asset_entry.asset_key, r.asset_entry.last_materialization_record, r.asset_entry.last_run_id)
                for r in storage.get_asset_records([AssetKey("m")])
            ],  # fmt: skip
        )
        storage.dispose()
    assert seen["pooled"] == seen["stock"]
    assert len(seen["pooled"][1]) == 6
    last = seen["pooled"][4][0][1]
    assert last is not None and last.storage_id == max(seen["pooled"][3].values())  # the newest, not the first


def test_a_step_holding_its_evaluations_records_what_logging_them_one_by_one_records(tmp_path: Path) -> None:
    """Through Dagster itself (a run, ``context.log_event``): held evaluations reach the step's events and the
    instance's check records exactly like ones written as logged, on the stock instance."""
    import warnings

    from dagster import (
        AssetCheckEvaluation,
        AssetCheckSpec,
        AssetMaterialization,
        AssetSpec,
        PreviewWarning,
        StaticPartitionsDefinition,
        materialize,
        multi_asset,
    )

    from llm_infer_dagster.orchestration.assets.checks import holding_evaluations, latest_target

    parts = StaticPartitionsDefinition(["a", "b"])
    comp = AssetKey(["t", "completions"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        checks = [AssetCheckSpec(n, asset=comp, partitions_def=parts) for n in CHECKS]

    @multi_asset(specs=[AssetSpec(comp, partitions_def=parts, skippable=True)], check_specs=checks, can_subset=True)
    def shards(context):  # type: ignore[no-untyped-def]  # (a string annotation is refused by Dagster)
        for shard in context.partition_keys:
            context.log_event(AssetMaterialization(comp, partition=shard))
            target = latest_target(context.instance, comp, shard)
            with holding_evaluations(context.instance):
                for n in CHECKS:
                    context.log_event(AssetCheckEvaluation(asset_key=comp, check_name=n, passed=n != CHECKS[1],
                                      partition=shard, target_materialization_data=target))  # fmt: skip
        yield from ()

    seen = {}
    for name, pooled in (("stock", False), ("pooled", True)):
        instance = _instance(tmp_path / name, pooled)
        result = materialize([shards], instance=instance, partition_key="b")
        assert result.success
        evaluations = {(e.check_name, e.partition, e.passed) for e in result.get_asset_check_evaluations()}
        storage = instance.event_log_storage
        keys = [AssetCheckKey(comp, n) for n in CHECKS]
        infos = {
            (i.check_key.name, i.partition_key): (i.latest_execution_status, i.is_current)
            for i in storage.get_asset_check_partition_info(keys)
        }
        run = [r.event_log_entry.dagster_event_type for r in storage.get_records_for_run(result.run_id).records]
        seen[name] = (evaluations, infos, run)
        instance.dispose()
    assert seen["pooled"] == seen["stock"]
    assert seen["pooled"][1][(CHECKS[1], "b")] == (AssetCheckExecutionRecordStatus.FAILED, True)
    assert seen["pooled"][1][(CHECKS[0], "b")] == (AssetCheckExecutionRecordStatus.SUCCEEDED, True)


def test_a_writer_inside_a_batch_may_open_another_file(tmp_path: Path) -> None:
    """Inside a batch's index transaction, a row writer that opens another database (a run's file) proceeds
    instead of waiting on the storage's lock forever; the index joins the batch's own transaction."""
    from dagster import AssetMaterialization, DagsterEventType

    from llm_infer_dagster.orchestration.dagster_internals.private import StepMaterializationData

    storage = PooledSqliteEventLogStorage(str(tmp_path / "runs"))
    with storage._db_lock:  # noqa: SLF001 - reentrant, or the nested write below would wait forever
        assert storage._db_lock.acquire(blocking=False)  # noqa: SLF001
        storage._db_lock.release()  # noqa: SLF001
    opened = []

    class Nested(PooledSqliteEventLogStorage):
        def _store_asset_event(self, conn: Any, event: Any, event_id: int) -> None:
            with self.run_connection("other") as other, self.index_connection() as index:
                opened.append((other is not conn, index is conn))
            super()._store_asset_event(conn, event, event_id)

    storage.__class__ = Nested
    mat = StepMaterializationData(AssetMaterialization(AssetKey("m"), partition="p"))
    storage.store_event(_entry(DagsterEventType.ASSET_MATERIALIZATION, mat))
    assert opened == [(True, True)]
    assert storage.stored_materialization(AssetKey("m"), "p") is not None
