"""The end-to-end paths that matter, on a real PostgreSQL instance instead of sqlite: `llm-infer` with a
SIGKILL and a resume, the sensor and the schedule, two concurrent runs through the GPU executor."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import polars as pl
import pytest
import test_automation as automation
import test_gpu_executor as gpu_executor
from dagster import AssetKey, DagsterInstance
from postgres_server import PostgresServer, postgres_yaml
from tests_support import CONFIGS, Settings, cli_env, llm_infer, sigkill_llm_infer_after, write_qa_input

from llm_infer_dagster.orchestration.assets.factory import build_task_assets
from llm_infer_dagster.tasks.loader import load_task


@pytest.fixture
def pg_home(postgres_server: PostgresServer, tmp_path: Path) -> Path:
    """``tmp_path/home``: a DAGSTER_HOME whose runs, events and schedules live in a fresh Postgres database."""
    url = postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(postgres_yaml(url))
    return home


def _instance(home: Path) -> DagsterInstance:
    instance = DagsterInstance.from_config(str(home))
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    return instance


@pytest.mark.slow
def test_llm_infer_sigkill_and_resume_on_postgres(pg_home: Path, tmp_path: Path, tiny_model_path: str) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    write_qa_input(data, files=2, rows=12)
    args = ["--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu", "--output_path", str(out),
            "--task_name", "qa_regex", "--config_path", str(CONFIGS), "--input_path", str(data),
            "--shard_size", "2", "--batch_size", "1"]  # fmt: skip
    env = cli_env(DAGSTER_HOME=str(pg_home))
    comp_dir = out / "qa_regex" / "completions"
    sigkill_llm_infer_after(args, comp_dir, shards=2, timeout=240, env=env)

    inst = _instance(pg_home)
    keys = inst.get_dynamic_partitions("qa_regex_shards")
    assert len(keys) == 12
    # Registration wrote every input observation through the storage's batch path.
    observed = {r.partition_key for r in inst.fetch_observations(AssetKey(["qa_regex", "input"]), limit=100).records}
    assert observed == set(keys)
    comp = AssetKey(["qa_regex", "completions"])
    done_before = inst.get_materialized_partitions(comp)
    assert 1 <= len(done_before) < len(keys)
    stamps = {k: (comp_dir / f"{k}.parquet").stat().st_mtime_ns for k in done_before}

    resumed = llm_infer(*args, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "12/12 shards done, 24 rows" in resumed.stdout
    assert not (out / ".dagster").exists()  # the Postgres DAGSTER_HOME was used, no sqlite instance made
    assert inst.get_materialized_partitions(comp) == set(keys)
    for k, mtime in stamps.items():  # finished shards were not redone
        assert (comp_dir / f"{k}.parquet").stat().st_mtime_ns == mtime
    ids = pl.concat([pl.read_parquet(p) for p in (out / "qa_regex" / "answers").glob("*.parquet")])["record_id"]
    assert ids.len() == 24 and ids.n_unique() == 24
    again = llm_infer(*args, env=env)
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr


def _automation_setup(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = tmp_path / "data"
    write_qa_input(data, files=1, rows=5)
    configs = automation._task_copy(tmp_path, {"input_path": str(data), "shard_size": 2})
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    settings = Settings(task_configs=str(configs), output_dir=str(tmp_path / "out"))
    bundle = build_task_assets(load_task(configs, "qa_regex"), settings.deployment)
    return _instance(home), bundle, settings, data


def test_sensor_on_postgres(pg_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    automation.test_sensor_adds_exactly_the_new_shards_and_nothing_on_a_second_tick(
        _automation_setup(pg_home, tmp_path, monkeypatch)
    )


def test_schedule_on_postgres(pg_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    automation.test_schedule_requests_exactly_the_missing_shards(_automation_setup(pg_home, tmp_path, monkeypatch))


@pytest.mark.slow
def test_concurrent_runs_share_no_gpu_on_postgres(pg_home: Path, tmp_path: Path) -> None:
    _instance(pg_home)  # the schema exists before runs start side by side
    gpu_executor.test_concurrent_runs_never_share_a_gpu_and_wait_when_full(tmp_path)


def test_planned_check_rows_are_narrowed_on_postgres_and_read_back_as_stock(postgres_server: PostgresServer) -> None:
    """``NarrowedPostgresEventLogStorage`` (named in dagster.yaml by ``postgres_instance_yaml``) writes each
    planned check row with its own partition, not the run's every one; the statuses read back as the stock
    Postgres storage's."""
    from test_sqlite_events import _planned_check_run

    from llm_infer_dagster.orchestration.dagster_internals.postgres_events import (
        NarrowedPostgresEventLogStorage,
        postgres_instance_yaml,
    )
    from llm_infer_dagster.orchestration.dagster_internals.private import AssetCheckExecutionRecordStatus

    keys = [f"shard-{i:04d}" for i in range(200)] + ['a "quoted" \\ shard', "café-ünïcode"]
    seen = {}
    for name, yaml in (("stock", postgres_yaml), ("narrowed", postgres_instance_yaml)):
        home = Path(tempfile.mkdtemp(prefix=f"pg-{name}-"))
        (home / "dagster.yaml").write_text(yaml(postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")))
        instance = DagsterInstance.from_config(str(home))
        storage = instance.event_log_storage
        assert (type(storage) is NarrowedPostgresEventLogStorage) == (name == "narrowed")
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        check_key = _planned_check_run(storage, keys)
        records = storage.get_asset_check_execution_history(check_key, limit=1000)
        seen[name] = {(r.partition, r.run_id, r.status) for r in records}
        subsets = [
            r.event.get_dagster_event().event_specific_data.partitions_subset
            for r in records
            if r.status == AssetCheckExecutionRecordStatus.PLANNED
        ]
        sizes = {len(s.get_partition_keys()) for s in subsets}
        assert sizes == ({1} if name == "narrowed" else {len(keys)})
        instance.dispose()
    assert seen["narrowed"] == seen["stock"]
    assert (keys[1], "run1", AssetCheckExecutionRecordStatus.FAILED) in seen["narrowed"]
