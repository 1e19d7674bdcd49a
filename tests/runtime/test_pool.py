"""The worker pool with real engine processes on the tiny HF model: every shard gets exactly one result,
work is shared, and a worker that fails to load or dies fails only what it holds, never hanging the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from llm_infer_dagster.engines.base import Completion
from llm_infer_dagster.engines.spec import EngineSpec
from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.runtime.dispatch import ShardJob, ShardResult
from llm_infer_dagster.runtime.gpus import split_gpus, visible_gpu_ids
from llm_infer_dagster.runtime.leases import GpuLeaser
from llm_infer_dagster.runtime.messages import Done, Exited, Fatal, Loaded, WorkerEvent
from llm_infer_dagster.runtime.pool import WorkerPool
from llm_infer_dagster.shards.tables import COMPLETION_SCHEMA, PROMPT_SCHEMA

SAMPLING = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(autouse=True)
def one_thread_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers inherit the environment: one OpenMP thread each keeps 2+ engines from oversubscribing a
    small CPU, where spinning OpenMP threads make a 0.02 s shard take 2 s."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def write_prompt_shard(path: Path, key: str, rows: int, *, error_row: int | None = None, chat_row: int | None = None):
    record_ids, prompts, is_chat, errors = [], [], [], []
    for i in range(rows):
        record_ids.append(f"{key}:{i}")
        if i == chat_row:
            prompts.append(json.dumps([{"role": "user", "content": f"hello {i}"}]))
            is_chat.append(True)
        else:
            prompts.append(f"Question {i} of {key}: what comes next?")
            is_chat.append(False)
        errors.append("KeyError: 'question'" if i == error_row else None)
    if error_row is not None:
        prompts[error_row] = ""
    pl.DataFrame(
        {"record_id": record_ids, "prompt": prompts, "is_chat": is_chat, "error": errors}, schema=PROMPT_SCHEMA
    ).write_parquet(path)


def make_jobs(tmp_path: Path, n: int, rows: int = 3, **kwargs: Any) -> list[ShardJob]:
    (tmp_path / "prompts").mkdir(exist_ok=True)
    (tmp_path / "completions").mkdir(exist_ok=True)
    jobs = []
    for i in range(n):
        key = f"f-0000000{i % 10}-{i:05d}"
        p = tmp_path / "prompts" / f"{key}.parquet"
        write_prompt_shard(p, key, rows, **kwargs)
        jobs.append(ShardJob(key, str(p), str(tmp_path / "completions" / f"{key}.parquet")))
    return jobs


def spec(model_path: str, batch_size: int = 8) -> EngineSpec:
    return EngineSpec(model_type="hf", model_path=model_path, device="cpu", batch_size=batch_size)


def one_result_per_job(jobs: list[ShardJob], results: list[ShardResult]) -> dict[str, ShardResult]:
    counts = Counter(r.key for r in results)
    assert counts == Counter(j.key for j in jobs), counts
    return {r.key: r for r in results}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it no longer runs.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------------------------- happy path


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_workers_complete_every_shard(tmp_path: Path, tiny_model_path: str) -> None:
    jobs = make_jobs(tmp_path, 4, rows=3, error_row=1, chat_row=2)
    msgs: list[tuple[int, WorkerEvent]] = []
    pool = WorkerPool(
        spec(tiny_model_path),
        SAMPLING,
        workers=2,
        log_dir=tmp_path / "logs",
        on_message=lambda i, m: msgs.append((i, m)),
    )
    results = list(pool.run(jobs))
    by_key = one_result_per_job(jobs, results)
    for job in jobs:
        r = by_key[job.key]
        assert r.ok, r.error
        assert r.error is None
        assert r.rows == 3 and r.errors == 1
        assert r.worker in (0, 1) and r.gpus == ""
        assert r.completion_tokens > 0 and r.prompt_tokens > 0
        df = pl.read_parquet(job.output)
        assert df.schema == pl.Schema(COMPLETION_SCHEMA)
        assert df["record_id"].to_list() == [f"{job.key}:{i}" for i in range(3)]
        # The prompt error is carried through as the row's error, with no generation.
        assert df["error"].to_list()[1] == "prompt: KeyError: 'question'"
        assert df["response"].to_list()[1] is None and df["completion_tokens"][1] == 0
        # The text and the chat rows were generated.
        for i in (0, 2):
            assert df["error"][i] is None
            assert isinstance(df["response"][i], str)
            assert 1 <= df["completion_tokens"][i] <= SAMPLING["max_tokens"]
            assert df["finish_reason"][i] in ("stop", "length")
        assert r.completion_tokens == df["completion_tokens"].sum()
        assert json.loads(df["sampling_params"][0]) == SAMPLING
        assert df["model"][0] == tiny_model_path
    # Each worker loaded its model once and reported its pid; none are left running.
    loaded = {i: m.pid for i, m in msgs if isinstance(m, Loaded)}
    assert set(loaded) == {0, 1}
    assert not any(isinstance(m, Exited) for _, m in msgs)
    for pid in loaded.values():
        assert not pid_alive(pid)
    assert {p.name for p in (tmp_path / "logs").iterdir()} == {"worker-0.log", "worker-1.log"}
    assert not [p for p in (tmp_path / "completions").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_both_workers_share_the_queue_and_get_their_gpu_slice(tmp_path: Path, tiny_model_path: str) -> None:
    jobs = make_jobs(tmp_path, 10, rows=4)
    seen_loaded: set[int] = set()
    waited = [0.0]

    def on_message(i: int, m: WorkerEvent) -> None:
        if isinstance(m, Loaded):
            seen_loaded.add(i)
        # Hold the dispatcher briefly while only one worker is up, so a fast first worker cannot drain the
        # queue before the other has loaded; the other keeps loading meanwhile.
        if isinstance(m, Done) and len(seen_loaded) < 2 and waited[0] < 60:
            time.sleep(0.5)
            waited[0] += 0.5

    pool = WorkerPool(
        spec(tiny_model_path),
        SAMPLING,
        workers=2,
        gpu_slices=[["7"], ["5", "6"]],
        log_dir=tmp_path / "logs",
        on_message=on_message,
    )
    results = list(pool.run(jobs))
    by_key = one_result_per_job(jobs, results)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    per_worker = Counter(r.worker for r in results)
    assert set(per_worker) == {0, 1}, per_worker
    assert {r.gpus for r in results if r.worker == 0} == {"7"}
    assert {r.gpus for r in results if r.worker == 1} == {"5,6"}
    for job in jobs:
        assert pl.read_parquet(job.output)["record_id"].to_list() == [f"{job.key}:{i}" for i in range(4)]
        assert by_key[job.key].rows == 4


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fewer_shards_than_workers_starts_fewer_workers(tmp_path: Path, tiny_model_path: str) -> None:
    jobs = make_jobs(tmp_path, 1)
    workers_seen: set[int] = set()
    pool = WorkerPool(
        spec(tiny_model_path),
        SAMPLING,
        workers=3,
        log_dir=tmp_path / "logs",
        on_message=lambda i, m: workers_seen.add(i),
    )
    results = list(pool.run(jobs))
    assert [r.ok for r in results] == [True]
    assert workers_seen == {0}
    assert list(WorkerPool(spec(tiny_model_path), SAMPLING, workers=2, log_dir=tmp_path / "l2").run([])) == []
    assert not (tmp_path / "l2").exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_bad_shard_fails_alone(tmp_path: Path, tiny_model_path: str) -> None:
    jobs = make_jobs(tmp_path, 3)
    bad = ShardJob("f-0000000f-00099", str(tmp_path / "prompts" / "missing.parquet"), str(tmp_path / "x.parquet"))
    jobs.insert(1, bad)
    pool = WorkerPool(spec(tiny_model_path), SAMPLING, workers=1, log_dir=tmp_path / "logs")
    by_key = one_result_per_job(jobs, list(pool.run(jobs)))
    assert not by_key[bad.key].ok
    assert "missing.parquet" in (by_key[bad.key].error or "")
    assert not Path(bad.output).exists()
    assert all(by_key[j.key].ok for j in jobs if j is not bad)


# ----------------------------------------------------------------------------------------------- failures


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_engine_that_fails_to_load_fails_every_shard_without_hanging(tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path, 3)
    bad_model = str(tmp_path / "no-such-model")
    msgs: list[tuple[int, WorkerEvent]] = []
    pool = WorkerPool(
        spec(bad_model),
        SAMPLING,
        workers=2,
        log_dir=tmp_path / "logs",
        on_message=lambda i, m: msgs.append((i, m)),
    )
    t0 = time.monotonic()
    results = list(pool.run(jobs))
    assert time.monotonic() - t0 < 90
    one_result_per_job(jobs, results)
    assert all(not r.ok for r in results)
    assert all(r.error for r in results)
    assert not any(Path(j.output).exists() for j in jobs)
    exited = {i: m for i, m in msgs if isinstance(m, Exited)}
    assert set(exited) == {0, 1}
    for m in exited.values():
        assert bad_model in m.error and "loading hf model" in m.error
        assert m.log.endswith(".log")
    assert not any(isinstance(m, Loaded) for _, m in msgs)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_load_failure_reason_reaches_the_shard_results(tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path, 2)
    bad_model = str(tmp_path / "no-such-model")
    results = list(WorkerPool(spec(bad_model), SAMPLING, workers=1, log_dir=tmp_path / "logs").run(jobs))
    assert len(results) == 2
    for r in results:
        assert not r.ok
        assert bad_model in (r.error or "")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_killed_worker_fails_only_its_inflight_shard(tmp_path: Path, tiny_model_path: str) -> None:
    jobs = make_jobs(tmp_path, 8, rows=4)
    msgs: list[tuple[int, WorkerEvent]] = []
    killed: list[int] = []

    def on_message(i: int, m: WorkerEvent) -> None:
        msgs.append((i, m))
        if i == 1 and isinstance(m, Loaded):
            os.kill(m.pid, signal.SIGKILL)
            killed.append(m.pid)

    pool = WorkerPool(spec(tiny_model_path), SAMPLING, workers=2, log_dir=tmp_path / "logs", on_message=on_message)
    results = list(pool.run(jobs))
    assert killed, "worker 1 never loaded"
    by_key = one_result_per_job(jobs, results)
    failed = [r for r in results if not r.ok]
    ok = [r for r in results if r.ok]
    # Only what worker 1 held when it died can fail: at most the one shard it was handed.
    assert len(failed) <= 1
    for r in failed:
        assert r.worker == 1
        assert "worker 1" in (r.error or "") and "-9" in (r.error or "")
        assert not Path(next(j for j in jobs if j.key == r.key).output).exists()
    # Worker 0 finished everything else.
    assert {r.worker for r in ok} == {0}
    assert len(ok) == len(jobs) - len(failed)
    for r in ok:
        job = next(j for j in jobs if j.key == r.key)
        assert pl.read_parquet(job.output)["record_id"].to_list() == [f"{job.key}:{i}" for i in range(4)]
    assert set(by_key) == {j.key for j in jobs}
    exited = [m for i, m in msgs if i == 1 and isinstance(m, Exited)]
    assert len(exited) == 1 and exited[0].code == -signal.SIGKILL
    assert not pid_alive(killed[0])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_abandoning_the_results_stops_the_workers(tmp_path: Path, tiny_model_path: str) -> None:
    jobs = make_jobs(tmp_path, 6)
    pids: list[int] = []
    pool = WorkerPool(
        spec(tiny_model_path),
        SAMPLING,
        workers=2,
        log_dir=tmp_path / "logs",
        on_message=lambda i, m: pids.append(m.pid) if isinstance(m, Loaded) else None,
    )
    gen = pool.run(jobs)
    first = next(gen)
    assert first.ok
    gen.close()
    assert pids
    deadline = time.monotonic() + 15
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids)


# ------------------------------------------------------------------------------------- fake engines
# This file run as a script is a worker serving FakeEngine (see the end of the file): real worker and pool
# processes, with an engine that misbehaves on cue.

FAKE_WORKER = [sys.executable, str(Path(__file__).resolve())]


class EngineDeadError(RuntimeError):
    """Named as vLLM's: the worker takes it to mean the engine is gone."""


class FakeEngine:
    """Answers each prompt with the worker's VLLM_WORKER_MULTIPROC_METHOD; ``model_path`` says how it fails:
    ``raise:<text>`` raises for a shard with a prompt containing text, ``dead`` raises EngineDeadError,
    ``fork-and-die:<pid file>`` forks a child that keeps the worker's pipes open, then the worker dies."""

    name = "fake"

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path

    def generate(self, prompts: list[Any], sampling: dict[str, Any]) -> list[Completion]:
        mode, _, arg = self.model_path.partition(":")
        if mode == "raise" and any(arg in str(p) for p in prompts):
            raise RuntimeError(f"boom on {arg}")
        if mode == "dead":
            raise EngineDeadError("engine core died")
        if mode == "sleep":
            time.sleep(float(arg))
        if mode == "slow":  # slow:<text>@<seconds>: hangs on a shard with a prompt containing text
            text, _, seconds = arg.partition("@")
            if any(text in str(p) for p in prompts):
                time.sleep(float(seconds))
        if mode == "die" and any(arg in str(p) for p in prompts):  # the worker process dies on that shard
            os._exit(9)
        if mode == "die-once":  # die-once:<text>@<marker file>: dies on that shard the first time only
            text, _, marker = arg.partition("@")
            if any(text in str(p) for p in prompts) and not Path(marker).exists():
                Path(marker).write_text("died")
                os._exit(9)
        if mode == "fork-and-die":
            child = os.fork()
            if child == 0:  # as a forked vLLM EngineCore would: holds the message pipe, outlives the worker
                time.sleep(120)
                os._exit(0)
            Path(arg).write_text(str(child))
            os._exit(3)
        answer = os.environ.get("VLLM_WORKER_MULTIPROC_METHOD", "")
        return [Completion([answer], ["stop"], prompt_tokens=1, completion_tokens=1) for _ in prompts]

    def close(self) -> None:
        pass


def fake_pool(tmp_path: Path, mode: str, msgs: list[tuple[int, WorkerEvent]] | None = None) -> WorkerPool:
    return WorkerPool(
        EngineSpec(model_type="fake", model_path=mode),
        SAMPLING,
        workers=1,
        log_dir=tmp_path / "logs",
        on_message=(lambda i, m: msgs.append((i, m))) if msgs is not None else None,
        worker_command=FAKE_WORKER,
    )


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_engine_error_on_one_shard_fails_it_alone_and_the_worker_carries_on(tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path, 4)
    msgs: list[tuple[int, WorkerEvent]] = []
    by_key = one_result_per_job(jobs, list(fake_pool(tmp_path, f"raise:{jobs[1].key}", msgs).run(jobs)))
    bad = by_key[jobs[1].key]
    assert not bad.ok and bad.worker == 0
    assert f"engine step failed: RuntimeError: boom on {jobs[1].key}" == bad.error
    assert not Path(jobs[1].output).exists()
    for job in (jobs[0], jobs[2], jobs[3]):  # before and after the error, on the same worker
        assert by_key[job.key].ok, by_key[job.key].error
        # Engine processes are spawned, never forked (a forked one would hold the worker's pipes).
        assert pl.read_parquet(job.output)["response"].to_list() == ["spawn"] * 3
    assert not any(isinstance(m, Exited | Fatal) for _, m in msgs)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_multiproc_method_already_set_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "fork")
    jobs = make_jobs(tmp_path, 1)
    assert [r.ok for r in fake_pool(tmp_path, "echo").run(jobs)] == [True]
    assert pl.read_parquet(jobs[0].output)["response"].to_list() == ["fork"] * 3


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_dead_engine_fails_what_it_holds_and_the_worker_exits(tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path, 3)
    msgs: list[tuple[int, WorkerEvent]] = []
    results = list(fake_pool(tmp_path, "dead", msgs).run(jobs))
    one_result_per_job(jobs, results)
    assert not any(r.ok for r in results)
    assert any(r.worker == 0 for r in results)
    for r in results:
        assert "engine unusable: EngineDeadError: engine core died" in (r.error or ""), r.error
    assert [m.kind for _, m in msgs].count("fatal") == 1
    exited = [m for _, m in msgs if isinstance(m, Exited)]
    assert len(exited) == 1 and exited[0].code == 0  # it left cleanly


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_worker_that_dies_while_its_child_holds_the_pipe_is_still_reaped(tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path, 3)
    pid_file = tmp_path / "grandchild.pid"
    t0 = time.monotonic()
    results = list(fake_pool(tmp_path, f"fork-and-die:{pid_file}").run(jobs))
    assert time.monotonic() - t0 < 30  # not waiting for the pipe's EOF (the child sleeps 120 s)
    by_key = one_result_per_job(jobs, results)
    in_flight = [r for r in results if r.worker == 0]
    assert in_flight, by_key
    assert not any(r.ok for r in results)
    for r in in_flight:
        assert "worker 0 exited with code 3 while running this shard" in (r.error or "")
    for r in results:
        if r.worker != 0:
            assert "not run: every engine worker exited (worker 0 exited with code 3)" in (r.error or "")
    # The worker's process group went down with it: its child is gone too.
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(grandchild)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_workers_hold_the_steps_gpu_lease_until_they_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step killed with kill -9 drops its own lock descriptors at once; its workers (which hold the GPU
    memory) inherit the lease, so the GPU is not handed out again before they are gone."""
    lock_dir = tmp_path / "locks"
    lease = GpuLeaser(["g0"], lock_dir).acquire(1)
    monkeypatch.setenv("LLM_INFER_GPU_LEASE_FDS", ",".join(map(str, lease.fds)))
    jobs = make_jobs(tmp_path, 1)
    loaded = threading.Event()
    pool = fake_pool(tmp_path, "sleep:3", [])
    pool.on_message = lambda _i, m: loaded.set() if isinstance(m, Loaded) else None
    results: list = []
    runner = threading.Thread(target=lambda: results.extend(pool.run(jobs)))
    runner.start()
    assert loaded.wait(30)
    lease.release()  # as if the step process were gone: only the worker still holds the lock
    assert GpuLeaser(["g0"], lock_dir).try_acquire(1) is None
    runner.join(30)
    assert [r.ok for r in results] == [True]
    again = GpuLeaser(["g0"], lock_dir).try_acquire(1)  # the worker has exited: the GPU is free
    assert again is not None
    again.release()


def test_a_worker_whose_parent_is_already_gone_goes_down_at_once() -> None:
    """The parent's pid comes on the command line: a parent that died before the worker armed its
    parent-death signal (the worker is then another process's child) still takes the worker down."""
    code = "import sys; from llm_infer_dagster.runtime.process_tree import take_group_down_with_parent as t; "
    code += "t(int(sys.argv[1])); print('alive', flush=True)"
    not_the_parent = str(2**22 + 1)  # above any pid_max: never a pid
    gone = subprocess.run([sys.executable, "-c", code, not_the_parent], start_new_session=True, capture_output=True)
    assert gone.returncode == -signal.SIGKILL and b"alive" not in gone.stdout  # killed its own group at once
    ok = subprocess.run([sys.executable, "-c", code, str(os.getpid())], start_new_session=True, capture_output=True)
    assert ok.returncode == 0 and ok.stdout == b"alive\n", ok.stderr


def test_gpu_slices_must_match_workers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 workers need 2 GPU slices, got 1"):
        WorkerPool(spec("/m"), SAMPLING, workers=2, gpu_slices=[["0"]], log_dir=tmp_path)


# ------------------------------------------------------------------------------------------------- gpus


@pytest.mark.parametrize(
    "gpus, workers, tp, expected",
    [
        (["0", "1", "2", "3"], 2, 2, [["0", "1"], ["2", "3"]]),
        (["0", "1", "2", "3"], 4, 1, [["0"], ["1"], ["2"], ["3"]]),
        (["0", "1", "2", "3"], 1, 2, [["0", "1"]]),  # spare GPUs stay unused
        (["4", "6", "7"], 3, 1, [["4"], ["6"], ["7"]]),  # ids are kept, not renumbered
        (["0", "1", "2", "3", "4", "5"], 3, 2, [["0", "1"], ["2", "3"], ["4", "5"]]),
    ],
)
def test_split_gpus(gpus: list[str], workers: int, tp: int, expected: list[list[str]]) -> None:
    out = split_gpus(gpus, workers, tp)
    assert out == expected
    flat = [g for s in out for g in s]
    assert len(flat) == len(set(flat)) == workers * tp


def test_split_gpus_too_few() -> None:
    with pytest.raises(SettingsError) as exc:
        split_gpus(["0", "1", "2"], 2, 2)
    msg = str(exc.value)
    assert "2 x 2 = 4 GPUs" in msg and "3 are visible (CUDA_VISIBLE_DEVICES: 0,1,2)" in msg and "--use_cpu" in msg
    with pytest.raises(SettingsError, match=r"0 are visible \(CUDA_VISIBLE_DEVICES: none\)"):
        split_gpus([], 1, 1)


@pytest.mark.parametrize(
    "env, expected", [("0,1", ["0", "1"]), (" 2 , 5 ", ["2", "5"]), ("", []), ("-1", []), ("3,", ["3"])]
)
def test_visible_gpu_ids_reads_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, env: str, expected: list[str]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert visible_gpu_ids() == expected


if __name__ == "__main__":  # a worker serving FakeEngine: WorkerPool(..., worker_command=FAKE_WORKER)
    from llm_infer_dagster.engines import spec as engine_spec
    from llm_infer_dagster.runtime import worker

    engine_spec.load_engine = lambda s: FakeEngine(s.model_path)  # type: ignore[assignment]
    worker.main()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_lazy_jobs_are_made_a_few_ahead_of_the_workers_not_all_at_once(tmp_path: Path) -> None:
    """A generator of jobs (the step makes each shard's prompts in it) is pulled as the workers need it."""
    jobs = make_jobs(tmp_path, 12)
    made: list[str] = []
    events: list[tuple[str, str]] = []

    def lazily():
        for job in jobs:
            made.append(job.key)
            events.append(("made", job.key))
            yield job

    pool = fake_pool(tmp_path, "ok")
    results = []
    for r in pool.run(lazily(), count=len(jobs)):
        events.append(("done", r.key))
        results.append(r)
    by_key = one_result_per_job(jobs, results)
    assert all(r.ok for r in by_key.values())
    assert made == [j.key for j in jobs]  # in order, each once
    first_done = events.index(next(e for e in events if e[0] == "done"))
    ahead = 1 * pool.prefetch + 1  # one worker
    made_before = sum(1 for e in events[:first_done] if e[0] == "made")
    assert made_before <= ahead + pool.prefetch + 1 < len(jobs), made_before  # not all 12 up front
    for key in (j.key for j in jobs):  # a shard's job is always made before its result comes back
        assert events.index(("made", key)) < events.index(("done", key))


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_shard_past_the_timeout_fails_alone_and_a_fresh_worker_takes_the_rest(tmp_path: Path) -> None:
    """The seed's --timeout: the hung shard fails with the reason; the shards after it still run."""
    jobs = make_jobs(tmp_path, 3)
    msgs: list[tuple[int, WorkerEvent]] = []
    pool = fake_pool(tmp_path, f"slow:{jobs[1].key}@60", msgs)
    pool.shard_timeout = 2
    pool.prefetch = 1  # one shard at a time: the hung one is the only one in flight
    by_key = one_result_per_job(jobs, list(pool.run(jobs)))
    assert by_key[jobs[0].key].ok and by_key[jobs[2].key].ok
    bad = by_key[jobs[1].key]
    assert not bad.ok and "still generating after 2 s (--timeout" in (bad.error or "")
    assert sum(1 for _i, m in msgs if isinstance(m, Loaded)) == 2  # the replacement loaded its engine once


# ------------------------------------------------------------------------------------- protocol

_OLD_READY = """
import os, sys, time
os.write(int(sys.argv[1]), b'{"type": "ready"}\\n')  # the protocol before runtime/messages.py
time.sleep(60)
"""
_SHORT_DONE = """
import json, os, sys, time
fd = int(sys.argv[1])
sys.stdin.readline()  # setup
os.write(fd, b'{"kind": "ready"}\\n')
job = json.loads(sys.stdin.readline())
os.write(fd, json.dumps({"kind": "done", "shard": job["shard"], "rows": 3}).encode() + b"\\n")
time.sleep(60)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("script", "reason", "in_flight"),
    [
        (_OLD_READY, "message without a 'kind' field: '{\"type\": \"ready\"}'", False),
        (_SHORT_DONE, "'done' message: missing field(s) 'errors', 'prompt_tokens', 'completion_tokens'", True),
    ],
)
def test_a_worker_speaking_another_protocol_is_stopped_not_misread(
    tmp_path: Path, script: str, reason: str, in_flight: bool
) -> None:
    jobs = make_jobs(tmp_path, 3)
    msgs: list[tuple[int, WorkerEvent]] = []
    pool = WorkerPool(
        EngineSpec(model_type="hf", model_path="/none"),
        SAMPLING,
        workers=1,
        log_dir=tmp_path / "logs",
        on_message=lambda i, m: msgs.append((i, m)),
        worker_command=[sys.executable, "-c", script],
    )
    t0 = time.monotonic()
    by_key = one_result_per_job(jobs, list(pool.run(jobs)))
    assert time.monotonic() - t0 < 30  # stopped at once, not waited for
    assert not any(r.ok for r in by_key.values())
    why = "worker 0 sent a message this version cannot read: "
    first = by_key[jobs[0].key].error or ""
    if in_flight:  # the shard it held fails with the reason; the rest were not run
        assert first.startswith(why) and reason in first and "while running this shard" in first, first
    for job in jobs[1:] if in_flight else jobs:
        error = by_key[job.key].error or ""
        assert error.startswith("not run: every engine worker exited (" + why) and reason in error, error
    exited = [m for _, m in msgs if isinstance(m, Exited)]
    assert len(exited) == 1 and exited[0].code == -signal.SIGKILL and reason in exited[0].error
    assert not any(isinstance(m, Done) for _, m in msgs)  # the short 'done' was never taken for one
