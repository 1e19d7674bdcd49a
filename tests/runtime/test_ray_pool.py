"""Engine workers as Ray actors on a local Ray instance (loopback, this machine's CPUs): the real HF engine
gives what the local pool gives; a worker or actor lost mid-shard costs only that shard, which another worker
retries; a shard that takes every worker down fails with the cause after RAY_SHARD_ATTEMPTS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import psutil
import pytest
from test_pool import FAKE_WORKER, SAMPLING, make_jobs, one_result_per_job, spec

from llm_infer_dagster.engines.spec import EngineSpec
from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.runtime.dispatch import ShardResult
from llm_infer_dagster.runtime.messages import Done, Exited, Loaded, Ready, WorkerEvent
from llm_infer_dagster.runtime.pool import WorkerPool
from llm_infer_dagster.runtime.ray_pool import RAY_SHARD_ATTEMPTS, RayWorkerPool, check_ray_address

ray = pytest.importorskip("ray")  # the `ray` extra; CI installs it

RAY_PROCESSES = ("raylet", "gcs_server")


def ray_processes() -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        name = p.info["name"] or ""
        if any(n in name for n in RAY_PROCESSES) or name.startswith("ray::"):
            out.append(p)
    return out


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """One local Ray instance for the module (starting one takes seconds); gone, processes and all, after."""
    from llm_infer_dagster.runtime.ray_pool import ray_session

    before = {p.pid for p in ray_processes()}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ray_session("local") as r:
        yield r
    assert not ray.is_initialized()
    left = [p for p in ray_processes() if p.pid not in before and p.is_running()]
    for _ in range(50):
        left = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not left:
            break
        psutil.wait_procs(left, timeout=0.2)
    assert not left, [p.info for p in left]


def fake_ray_pool(tmp_path: Path, mode: str, workers: int = 2, **kwargs: Any) -> RayWorkerPool:
    return RayWorkerPool(
        EngineSpec(model_type="fake", model_path=mode),
        SAMPLING,
        workers=workers,
        log_dir=tmp_path / "logs",
        worker_command=FAKE_WORKER,
        **kwargs,
    )


def test_the_local_ray_instance_listens_on_loopback_only(local_ray: Any) -> None:
    assert [n["NodeManagerAddress"] for n in local_ray.nodes()] == ["127.0.0.1"]
    listening = [
        (p.name(), c.laddr.ip, c.laddr.port)
        for p in ray_processes()
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert any(name == "gcs_server" for name, _, _ in listening), listening
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for _, ip, _ in listening), listening


def test_ray_addresses_are_checked_before_anything_starts() -> None:
    for good in ("local", "auto", "ray://head:10001", "10.0.0.1:6379"):
        assert check_ray_address(good) == good
    for bad in ("", "ray://", "head", "ray://head:port", "http://x/y:1"):
        with pytest.raises(SettingsError, match="not a Ray address"):
            check_ray_address(bad)


def test_without_the_setting_ray_is_never_imported() -> None:
    code = (
        "import sys\n"
        "import llm_infer_dagster.definitions, llm_infer_dagster.orchestration.cli\n"
        "import llm_infer_dagster.orchestration.assets.pipeline, llm_infer_dagster.runtime.pool\n"
        "from llm_infer_dagster.orchestration.settings import RunSettings\n"
        "assert RunSettings.from_env().ray_address is None\n"
        "assert RunSettings.from_env(ray_address='local').gpus_per_run == 0\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LLM_INFER_RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_real_hf_engine_in_ray_actors_gives_what_local_workers_give(
    local_ray: Any, tiny_model_path: str, tmp_path: Path
) -> None:
    (tmp_path / "ray").mkdir()
    (tmp_path / "local").mkdir()
    jobs = make_jobs(tmp_path / "ray", 4, rows=3)
    placed: list[str] = []
    results = list(
        RayWorkerPool(
            spec(tiny_model_path),
            SAMPLING,
            workers=2,
            log_dir=tmp_path / "logs",
            on_placed=lambda i, where: placed.append(where),
        ).run(jobs)  # fmt: skip
    )
    by_key = one_result_per_job(jobs, results)
    assert all(r.ok and r.rows == 3 for r in by_key.values()), results
    assert all(r.node.startswith("actor ") and " on node " in r.node for r in by_key.values())
    node_ip = ray.nodes()[0]["NodeManagerAddress"]
    assert len(placed) == 2 and all(f"({node_ip}), gpus none" in p for p in placed), placed
    local_jobs = make_jobs(tmp_path / "local", 4, rows=3)
    local = list(WorkerPool(spec(tiny_model_path), SAMPLING, workers=1, log_dir=tmp_path / "ll").run(local_jobs))
    assert all(r.ok for r in local)
    for rj, lj in zip(jobs, local_jobs, strict=True):
        ray_df, local_df = pl.read_parquet(rj.output), pl.read_parquet(lj.output)
        assert ray_df["response"].to_list() == local_df["response"].to_list()
        assert ray_df.height == 3 and ray_df["error"].null_count() == 3


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_worker_lost_mid_shard_costs_only_that_shard_which_another_worker_retries(
    local_ray: Any, tmp_path: Path
) -> None:
    jobs = make_jobs(tmp_path, 6)
    marker = tmp_path / "died-once"
    msgs: list[tuple[int, WorkerEvent]] = []
    pool = fake_ray_pool(tmp_path, f"die-once:{jobs[2].key}@{marker}", on_message=lambda i, m: msgs.append((i, m)))
    by_key = one_result_per_job(jobs, list(pool.run(jobs)))
    assert marker.exists()  # it did die on that shard
    assert all(r.ok for r in by_key.values()), [r.error for r in by_key.values() if not r.ok]
    assert pool.attempts.get(jobs[2].key) == 1
    lost = [m for _, m in msgs if isinstance(m, Exited)]
    assert lost and "exited with code 9" in lost[0].error and " on node " in lost[0].error


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_actor_killed_mid_run_costs_only_its_shards(local_ray: Any, tmp_path: Path) -> None:
    """SIGKILL of the actor process itself (what a lost node looks like to the driver): RayActorError.

    The actor is killed as its worker asks for its second shard: the pool hands that shard to it right after
    this callback (``on_message`` runs before the pool acts on the message), so a shard is surely in flight on
    the dead actor, however the next messages are timed.
    """
    jobs = make_jobs(tmp_path, 8)
    killed: list[int] = []
    worker_pids: dict[int, int] = {}
    done: set[int] = set()

    def on_message(worker: int, msg: WorkerEvent) -> None:
        if isinstance(msg, Loaded):
            worker_pids[worker] = msg.pid
        if isinstance(msg, Done):
            done.add(worker)
        if isinstance(msg, Ready) and worker in done and not killed:
            actor_pid = psutil.Process(worker_pids[worker]).ppid()  # the worker's parent is its actor
            killed.append(actor_pid)
            os.kill(actor_pid, signal.SIGKILL)

    pool = fake_ray_pool(tmp_path, "sleep:0.5", on_message=on_message)
    results: list[ShardResult] = list(pool.run(jobs))
    by_key = one_result_per_job(jobs, results)
    assert killed
    assert all(r.ok for r in by_key.values()), [r.error for r in by_key.values() if not r.ok]
    assert sum(pool.attempts.values()) >= 1  # what the killed actor held went round again
    assert all("was lost" in why for why in pool.lost.values())


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_shard_that_kills_every_worker_fails_with_its_cause_after_the_retries(local_ray: Any, tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path, 3)
    pool = fake_ray_pool(tmp_path, f"die:{jobs[1].key}", workers=1, prefetch=1)
    by_key = one_result_per_job(jobs, list(pool.run(jobs)))
    bad = by_key[jobs[1].key]
    assert not bad.ok
    assert f"{RAY_SHARD_ATTEMPTS} engine workers were lost while running this shard" in (bad.error or "")
    assert "exited with code 9" in (bad.error or "")
    assert by_key[jobs[0].key].ok and by_key[jobs[2].key].ok


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_actor_ray_cannot_place_is_reported_then_given_up(
    local_ray: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This Ray instance has no GPU: an actor asking for one waits; the run says so, then fails its shards."""
    import llm_infer_dagster.runtime.ray_pool as ray_pool

    monkeypatch.setattr(ray_pool, "RAY_PLACEMENT_WARN_S", 1.0)
    monkeypatch.setattr(ray_pool, "RAY_PLACEMENT_TIMEOUT_S", 4.0)
    jobs = make_jobs(tmp_path, 2)
    pending: list[str] = []
    pool = fake_ray_pool(tmp_path, "echo", workers=1, num_gpus=1, on_pending=lambda _i, why: pending.append(why))
    by_key = one_result_per_job(jobs, list(pool.run(jobs)))
    assert pending and "Ray has not placed its actor after" in pending[0] and "needs 1 GPU(s) and 1 CPU" in pending[0]
    assert "CPU" in pending[0].split("the cluster has free:")[1]  # what the cluster does have
    for r in by_key.values():
        assert not r.ok and "was not placed by Ray in 4 s: no node had 1 GPU(s) and 1 CPU free" in (r.error or "")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_shard_past_the_timeout_on_ray_fails_and_is_not_retried(local_ray: Any, tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path, 2)
    pool = fake_ray_pool(tmp_path, "sleep:30", workers=1, prefetch=1, shard_timeout=2)
    by_key = one_result_per_job(jobs, list(pool.run(jobs)))
    first = by_key[jobs[0].key]
    assert not first.ok and "was still generating after 2 s" in (first.error or "")
    assert pool.attempts == {}  # a timeout is the shard's own fault: not retried on another worker
    assert "actor " in first.node and " on node " in first.node  # which actor and node it was on
