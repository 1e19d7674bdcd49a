"""Host-wide GPU leases: one ``flock`` per GPU, so concurrent steps and runs on a host never share a GPU.

The kernel drops a ``flock`` when its holder dies, so a crashed step's GPUs are free again at once, with no
cleanup and no daemon. GPU ids are opaque labels here ("0", "1", or "g0" in tests on a CPU-only machine).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llm_infer_dagster.runtime.gpus import check_gpu_need

DEFAULT_LOCK_DIR = "/tmp/llm-infer-gpu-locks"
# The step process's lease descriptors, so the engine workers it starts hold the lease too (lease_exec sets it).
LEASE_FDS_ENV = "LLM_INFER_GPU_LEASE_FDS"


@dataclass
class GpuLease:
    """GPUs held by this process until :meth:`release` (or until it exits, even by SIGKILL)."""

    gpu_ids: list[str]
    fds: list[int] = field(default_factory=list, repr=False)

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)  # closing the last descriptor drops the flock
        self.fds.clear()

    def __enter__(self) -> GpuLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class GpuLeaser:
    """Hands out ``n`` free GPUs from ``gpu_ids``, waiting while too few are free."""

    def __init__(self, gpu_ids: Sequence[str], lock_dir: str | Path = DEFAULT_LOCK_DIR) -> None:
        self.gpu_ids = list(gpu_ids)
        self.lock_dir = Path(lock_dir)

    def _lock_path(self, gpu: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", gpu)  # ids are labels; never let one name a path elsewhere
        return self.lock_dir / f"gpu-{safe}.lock"

    def _make_lock_dir(self) -> None:
        """Create the lock dir open to every user (the umask would not): another user's steps lock here too."""
        try:
            self.lock_dir.mkdir(parents=True)
        except FileExistsError:
            return
        with contextlib.suppress(OSError):
            self.lock_dir.chmod(0o777)

    def check_need(self, n: int) -> None:
        """The runtime's one GPU rule (:func:`check_gpu_need`) against the GPUs this leaser hands out."""
        check_gpu_need(n, self.gpu_ids, source="the executor's `gpus` config or CUDA_VISIBLE_DEVICES")

    def try_acquire(self, n: int) -> GpuLease | None:
        """``n`` GPUs now, or None (holding nothing) if fewer are free."""
        self.check_need(n)
        self._make_lock_dir()
        lease = GpuLease([])
        for gpu in self.gpu_ids:
            if len(lease.gpu_ids) == n:
                break
            fd = _open_lock(self._lock_path(gpu))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.set_inheritable(fd, True)  # the step process this lease is for keeps it across exec
            lease.gpu_ids.append(gpu)
            lease.fds.append(fd)
        if len(lease.gpu_ids) < n:
            lease.release()
            return None
        return lease

    def acquire(
        self,
        n: int,
        *,
        timeout: float | None = None,
        poll_seconds: float = 0.5,
        on_wait: Callable[[], None] | None = None,
    ) -> GpuLease:
        """Wait until ``n`` GPUs are free together, then hold them. Never holds a partial set while waiting."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waited = False
        while True:
            lease = self.try_acquire(n)
            if lease is not None:
                return lease
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no {n} free GPUs among {','.join(self.gpu_ids)} after {timeout} s")
            time.sleep(poll_seconds)


def inherited_lease_fds() -> list[int]:
    """The lease descriptors this process was given (``LLM_INFER_GPU_LEASE_FDS``) that are open here.

    A worker process keeps them open until it exits: a step killed with ``kill -9`` frees its GPUs only once
    its workers, which hold the GPU memory, are gone too.
    """
    fds = []
    for part in os.environ.get(LEASE_FDS_ENV, "").split(","):
        if part.strip().isdigit():
            try:
                os.fstat(int(part))
            except OSError:
                continue
            fds.append(int(part))
    return fds


def _open_lock(path: Path) -> int:
    """A descriptor to ``flock`` ``path``; a file this creates is made writable by every user on the host.

    The umask would leave it 0o644 and another user's step could not open it for writing. A lock file another
    user left read-only is opened read-only: ``flock`` needs no write access.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:
            return os.open(path, os.O_RDONLY)
    with contextlib.suppress(PermissionError):
        os.fchmod(fd, 0o666)
    return fd
