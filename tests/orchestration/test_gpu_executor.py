"""The real GPU-aware executor (StepDelegatingExecutor + our StepHandler) on real `dagster job execute`
runs, with label-only GPU ids: leases never overlap across concurrent runs, wait when full, free on crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterInstance

from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.orchestration.dagster_internals.gpu_executor import gpus_needed, step_command
from llm_infer_dagster.runtime.leases import GpuLeaser

DEFS = Path(__file__).with_name("executor_defs.py")


def _start(job: str, tmp: Path, *, gpus: list[str], env_extra: dict[str, str] | None = None, timeout=None):
    cfg = tmp / f"{job}-{time.monotonic_ns()}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"execution": {"config": {"gpus": gpus, "lock_dir": str(tmp / "locks"), "lease_timeout_s": timeout}}}
        )
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp / "home"),
        "LEASE_TEST_LOG": str(tmp / "log.jsonl"),
        **(env_extra or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "dagster", "job", "execute", "-f", str(DEFS), "-j", job, "-c", str(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _records(tmp: Path) -> list[dict]:
    log = tmp / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture()
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    with DagsterInstance.get():  # create the sqlite schema once, before runs start side by side
        pass
    return tmp_path


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


@pytest.mark.slow
def test_concurrent_runs_never_share_a_gpu_and_wait_when_full(tmp: Path) -> None:
    gpus = ["g0", "g1"]
    procs = [_start("two", tmp, gpus=gpus) for _ in range(2)] + [_start("one", tmp, gpus=gpus) for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outs)
    recs = _records(tmp)
    assert len(recs) == 4
    for r in recs:
        assert set(r["gpus"].split(",")) <= set(gpus)
    assert sorted(len(r["gpus"].split(",")) for r in recs) == [1, 1, 2, 2]
    for i, a in enumerate(recs):
        for b in recs[i + 1 :]:
            if _overlap(a, b):  # steps that ran at the same time held disjoint GPUs
                assert not set(a["gpus"].split(",")) & set(b["gpus"].split(",")), (a, b)
    twos = [r for r in recs if r["asset"] == "needs_two"]
    assert not _overlap(*twos)  # 2 of 2 GPUs each: the second run waited for the first
    assert any("waiting for 2 free GPU(s)" in o or "waiting for 1 free GPU(s)" in o for o in outs)


@pytest.mark.slow
def test_a_crashed_step_releases_its_gpus(tmp: Path) -> None:
    crashed = _start("two", tmp, gpus=["g0", "g1"], env_extra={"LEASE_TEST_CRASH": "needs_two"})
    crashed.communicate(timeout=240)
    assert crashed.returncode != 0
    assert _records(tmp) == []
    after = _start("two", tmp, gpus=["g0", "g1"], timeout=30)  # a leaked lease would time out here
    out = after.communicate(timeout=240)[0]
    assert after.returncode == 0, out[-3000:]
    assert [r["gpus"] for r in _records(tmp)] == ["g0,g1"]


@pytest.mark.slow
def test_more_gpus_than_exist_fails_at_once_and_cpu_steps_run_in_parallel_without_gpus(tmp: Path) -> None:
    too_many = _start("three", tmp, gpus=["g0", "g1"])
    cpu = _start("cpu", tmp, gpus=["g0", "g1"], env_extra={"LEASE_TEST_SLEEP": "5"})
    out = too_many.communicate(timeout=240)[0]
    assert too_many.returncode != 0
    assert (
        "3 GPUs (workers x tensor_parallel_size), but 2 are visible" in out
        and "config or CUDA_VISIBLE_DEVICES: g0,g1" in out
    )
    # Checked before any step: the CPU step ahead of the GPU step never started either.
    assert "STEP_START" not in out and "STEP_WORKER_STARTING" not in out, out[-3000:]
    cpu_out = cpu.communicate(timeout=240)[0]
    assert cpu.returncode == 0, cpu_out[-3000:]
    recs = {r["asset"]: r for r in _records(tmp)}
    assert "needs_three" not in recs and "before_three" not in recs
    assert recs["cpu_a"]["gpus"] == "" and recs["cpu_b"]["gpus"] == ""
    assert recs["cpu_a"]["pid"] != recs["cpu_b"]["pid"]  # each step in its own process
    assert _overlap(recs["cpu_a"], recs["cpu_b"])  # independent CPU steps ran at the same time


def test_gpus_needed_reads_the_run_settings() -> None:
    assert gpus_needed({}, {}) == 0
    assert gpus_needed({"llm_infer/gpus": "3"}, {}) == 3
    run = {"resources": {"settings": {"config": {"workers": 2, "tensor_parallel_size": 2, "use_cpu": False}}}}
    assert gpus_needed({"llm_infer/gpus": "settings"}, run) == 4
    tag = {"llm_infer/gpus": "settings"}
    with_model = {AssetKey(["t", "prompts"]), AssetKey(["t", "qwen", "completions"])}
    assert gpus_needed(tag, run, with_model) == 4
    assert gpus_needed(tag, run, {AssetKey(["t", "answers"]), AssetKey(["t", "raw"])}) == 0  # no model runs
    run["resources"]["settings"]["config"]["use_cpu"] = True
    assert gpus_needed({"llm_infer/gpus": "settings"}, run) == 0
    with pytest.raises(ValueError, match="must be a number or 'settings'"):
        gpus_needed({"llm_infer/gpus": "lots"}, {})


def test_step_command_runs_dagster_with_this_interpreter() -> None:
    assert step_command(["dagster", "api", "execute_step"]) == [sys.executable, "-m", "dagster", "api", "execute_step"]
    assert step_command(["/py", "-m", "dagster", "api"]) == ["/py", "-m", "dagster", "api"]


def test_leases_in_process(tmp_path: Path) -> None:
    leaser = GpuLeaser(["0", "1", "2"], tmp_path)
    a = leaser.try_acquire(2)
    assert a is not None and a.gpu_ids == ["0", "1"]
    assert leaser.try_acquire(2) is None  # only one left: no partial lease is held
    b = leaser.try_acquire(1)
    assert b is not None and b.gpu_ids == ["2"]
    a.release()
    with leaser.acquire(2, timeout=1) as c:
        assert c.gpu_ids == ["0", "1"]
    with pytest.raises(TimeoutError):
        leaser.acquire(3, timeout=0.3, poll_seconds=0.1)
    with pytest.raises(SettingsError, match="4 GPUs .workers x tensor_parallel_size., but"):
        leaser.try_acquire(4)
    evil = GpuLeaser(["../../etc/x"], tmp_path)
    with evil.acquire(1) as lease:
        assert lease.gpu_ids == ["../../etc/x"]
    assert all(p.parent == tmp_path for p in tmp_path.iterdir())


def test_lock_files_and_dir_are_usable_by_other_users(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a usual umask: files 0o644, dirs 0o755, which another user could not lock in
    try:
        with GpuLeaser(["0"], tmp_path / "locks").acquire(1):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "locks").stat().st_mode & 0o777 == 0o777
    assert (tmp_path / "locks" / "gpu-0.lock").stat().st_mode & 0o777 == 0o666
    # An existing lock file left read-only (by another user, say) still locks: flock needs no write access.
    (tmp_path / "locks" / "gpu-0.lock").chmod(0o444)
    with GpuLeaser(["0"], tmp_path / "locks").acquire(1) as lease:
        assert lease.gpu_ids == ["0"]


def test_the_executor_follows_its_steps_without_reading_their_shard_records(tmp: Path) -> None:
    """The orchestrating process tails the run's events without the per-shard records (8 a shard): the run
    still ends as Dagster's would, and every record is in the event log for the UI."""
    from dagster import DagsterEventType, execute_job

    from llm_infer_dagster.orchestration.dagster_internals.private import ReconstructableRepository

    job = ReconstructableRepository.for_file(str(DEFS), "defs").get_reconstructable_job("shard_records")
    with DagsterInstance.get() as instance:
        result = execute_job(job, instance=instance)
        assert result.success
        kinds = {e.event_type for e in result.all_events}
        assert DagsterEventType.STEP_SUCCESS in kinds and DagsterEventType.ASSET_MATERIALIZATION not in kinds
        stored = instance.fetch_materializations(AssetKey("shard_records"), limit=10).records
        assert sorted(r.partition_key for r in stored) == ["s0", "s1", "s2"]
