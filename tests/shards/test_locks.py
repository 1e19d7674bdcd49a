"""Shard leases and start-up locks across real processes (issue 13: two runs never compute one shard at once)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from llm_infer_dagster.shards.locks import ShardLeases, file_lock
from llm_infer_dagster.shards.store import TaskStore

KEY = "a_jsonl-0123abcd-00000"

HOLDER = textwrap.dedent(
    """
    import sys, time
    from llm_infer_dagster.shards.locks import ShardLeases
    from llm_infer_dagster.shards.store import TaskStore
    leases = ShardLeases(TaskStore(sys.argv[1], "t"), holder="run-in-child")
    assert leases.try_acquire(sys.argv[2])
    print("held", flush=True)
    time.sleep(120)
    """
)


def _hold_in_child(out: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), KEY], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_shard_leased_by_another_process_is_refused_and_freed_when_it_dies(tmp_path: Path) -> None:
    store = TaskStore(tmp_path, "t")
    child = _hold_in_child(tmp_path)
    try:
        leases = ShardLeases(store, holder="me")
        assert not leases.try_acquire(KEY)
        holder = leases.holder_of(KEY)
        assert holder is not None and f"pid {child.pid}" in holder and "run-in-child" in holder
        assert leases.try_acquire("a_jsonl-0123abcd-00001")  # other shards are free
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert leases.holder_of(KEY) is None  # the kernel dropped the dead holder's lease
    assert leases.try_acquire(KEY) and leases.held() == ["a_jsonl-0123abcd-00001", KEY]
    leases.release_all()
    assert leases.held() == [] and ShardLeases(store).try_acquire(KEY)


def test_a_lease_file_is_named_only_by_a_real_shard_key(tmp_path: Path) -> None:
    leases = ShardLeases(TaskStore(tmp_path, "t"))
    for bad in ("../../etc/passwd", "x/y", ""):
        try:
            leases.try_acquire(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} became a lease path")


def test_file_lock_lets_one_process_in_at_a_time(tmp_path: Path) -> None:
    lock = tmp_path / "init.lock"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from llm_infer_dagster.shards.locks import file_lock
        with file_lock(Path({str(lock)!r})):
            print("in", flush=True)
            time.sleep(1.5)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "in"
    t0 = time.monotonic()
    with file_lock(lock):
        waited = time.monotonic() - t0
    child.wait()
    assert waited > 0.5  # it waited for the child to leave the block
