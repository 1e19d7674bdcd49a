"""Locks across processes on one host: a lease per shard, so two runs never compute the same shard at once,
and a plain file lock for start-up races.

Whoever makes a shard (an ``llm-infer`` run, a Launchpad run, a schedule's run, on this host) holds its lease
from its raw rows to its answers. A run that finds a shard leased skips it and says who holds it; the kernel
drops a lease when its holder dies (even by SIGKILL), so a crash never leaves a shard locked. The lease files
live in ``<output>/<task>/.leases/``, named by shard key (a checked key, never a path).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llm_infer_dagster.shards.store import TaskStore


class ShardLeases:
    """The leases this process holds on one task's shards."""

    def __init__(self, store: TaskStore, holder: str = "") -> None:
        self.store = store
        self.holder = holder  # e.g. the Dagster run id, shown to whoever finds the shard leased
        self._fds: dict[str, int] = {}

    def _path(self, key: str) -> Path:
        return self.store.lease_path(key)

    def try_acquire(self, key: str) -> bool:
        """Lease ``key`` now, or False if another process holds it. Re-acquiring one held here is True."""
        if key in self._fds:
            return True
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        info = {"pid": os.getpid(), "host": socket.gethostname(), "holder": self.holder, "since": time.time()}
        with contextlib.suppress(OSError):  # who holds it is for messages only
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fds[key] = fd
        return True

    def release(self, key: str) -> None:
        fd = self._fds.pop(key, None)
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def release_all(self) -> None:
        for key in list(self._fds):
            self.release(key)

    def held(self) -> list[str]:
        return list(self._fds)

    def holder_of(self, key: str) -> str | None:
        """Who holds ``key``'s lease ("pid 123 on host, run abc"), or None if nobody does."""
        path = self._path(key)
        if key in self._fds or not path.exists():
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    info = json.loads(os.pread(fd, 4096, 0) or b"{}")
                except ValueError:
                    info = {}
                run = f", run {info['holder']}" if info.get("holder") else ""
                return f"pid {info.get('pid', '?')} on {info.get('host', '?')}{run}"
            return None
        finally:
            os.close(fd)

    def __enter__(self) -> ShardLeases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release_all()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (waiting for it): one process at a time in the block.

    Used where two commands starting together would race: creating the Dagster instance's tables, and
    registering a task's shards (the manifest and the partitions it adds).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
