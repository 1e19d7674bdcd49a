"""The pooled sqlite event log writes what Dagster's stock one reads, and the other way round."""

from __future__ import annotations

import logging
import os
from pathlib import Path

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
