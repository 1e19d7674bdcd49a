"""The end-to-end paths that matter, on a real PostgreSQL instance instead of sqlite: `llm-infer` with a
SIGKILL and a resume, the sensor and the schedule, two concurrent runs through the GPU executor."""

from __future__ import annotations

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
