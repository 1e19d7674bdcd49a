"""Run prompt shards through N engine worker processes, each on its own GPU slice, pulling from one queue.

The parent is the only dispatcher: a worker says ``ready`` and gets the next shard or ``stop``, so uneven
shards balance and the last shard cannot hang (the seed's shared-queue race). Results are yielded the moment
a worker reports a shard written, which is when the caller records it as materialized. A worker that dies
fails only its in-flight shards; the others carry on. What pool and workers say to each other is in
:mod:`llm_infer_dagster.runtime.messages`.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from llm_infer_dagster.engines.spec import EngineSpec
from llm_infer_dagster.runtime.dispatch import (
    Feed,
    ShardJob,
    ShardResult,
    WorkerState,
    dispatch,
    read_messages,
    result_of,
)
from llm_infer_dagster.runtime.leases import inherited_lease_fds
from llm_infer_dagster.runtime.messages import (
    Exited,
    ProtocolError,
    Setup,
    ToWorker,
    WorkerEvent,
    encode,
)


@dataclass(kw_only=True)
class _Worker(WorkerState):
    proc: subprocess.Popen[str]
    msgs: IO[bytes]
    log_path: Path
    exit_reason: str | None = None
    refused: bool = False  # it said something that is not this version's protocol: nothing more it says is read


_PROGRESS_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+\s*\[")  # tqdm: "Loading weights: 100%|#####| 21/21 [00:00<...]"


def _tail(path: Path, lines: int = 15) -> str:
    """The log's last lines, without progress bars (a killed worker's last line is often the weights' bar)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join([ln for ln in text if not _PROGRESS_BAR.search(ln)][-lines:])


def _exit_reason(index: int, code: int) -> str:
    """``worker 1 exited with code -9 (killed by SIGKILL)``: a negative code is the signal that ended it."""
    why = f"worker {index} exited with code {code}"
    if code < 0:
        with contextlib.suppress(ValueError):
            why += f" (killed by {signal.Signals(-code).name})"
    return why


class WorkerPool:
    """Start ``workers`` engine processes; ``run(jobs)`` yields one ShardResult per job as shards finish."""

    def __init__(
        self,
        spec: EngineSpec,
        sampling: dict[str, Any],
        *,
        workers: int = 1,
        gpu_slices: Sequence[Sequence[str]] | None = None,
        log_dir: Path,
        on_message: Callable[[int, WorkerEvent], None] | None = None,
        prefetch: int = 2,
        worker_command: Sequence[str] | None = None,
        shard_timeout: float | None = None,
    ) -> None:
        if gpu_slices is not None and len(gpu_slices) != workers:
            raise ValueError(f"{workers} workers need {workers} GPU slices, got {len(gpu_slices)}")
        self.spec = spec
        self.sampling = sampling
        self.workers = workers
        self.gpu_slices = gpu_slices
        self.log_dir = log_dir
        self.on_message = on_message or (lambda _i, _m: None)
        self.prefetch = prefetch  # shards a worker holds at once: the next is queued before the current drains
        # What starts a worker; it gets `<msg fd> <parent pid>` appended. Tests pass one serving fake engines.
        self.worker_command = list(worker_command or [sys.executable, "-m", "llm_infer_dagster.runtime.worker"])
        # The seed's --timeout: a shard a worker has worked on for longer fails, the worker is stopped (an engine
        # cannot drop one request for certain) and a new one takes its place for the shards still to come.
        self.shard_timeout = shard_timeout
        self._started: list[_Worker] = []  # this run's workers (replacements appended)

    def _start(self, index: int) -> _Worker:
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        gpus = ",".join(self.gpu_slices[index]) if self.gpu_slices is not None else ""
        if self.gpu_slices is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus  # before the child imports torch or vLLM
        # Engines started side by side collide on vLLM's default ports: give each its own base.
        env["VLLM_PORT"] = str(_free_port())
        # On CUDA vLLM otherwise forks its EngineCore, and a forked child inherits the message pipe's write end:
        # it would keep the pipe open after the worker died. A spawned one inherits only what it is given.
        env.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        if self.spec.device == "cpu" and "OMP_NUM_THREADS" not in env:
            # N CPU workers each using every core thrash each other (measured: 100x slower shards).
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.workers))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"worker-{index}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                # Our pid, so a worker whose parent died before it looked still notices (process_tree.py).
                [*self.worker_command, str(write_fd), str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd, *inherited_lease_fds()),  # the GPU lease lives as long as the worker
                env=env,
                text=True,
                start_new_session=True,  # its own process group: the worker takes its engine's processes down
            )
        os.close(write_fd)
        assert proc.stdin is not None
        proc.stdin.write(encode(Setup(worker=index, engine=self.spec, sampling=self.sampling, prefetch=self.prefetch)))
        proc.stdin.flush()
        os.set_blocking(read_fd, False)  # drained after the worker exits, while a child of it may hold the pipe
        return _Worker(index=index, gpus=gpus, proc=proc, msgs=os.fdopen(read_fd, "rb", buffering=0), log_path=log_path)

    @staticmethod
    def _send(w: _Worker, msg: ToWorker) -> None:
        assert w.proc.stdin is not None
        try:
            w.proc.stdin.write(encode(msg))
            w.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died; run() notices (EOF on its message pipe, or its exit)

    def run(self, jobs: Iterable[ShardJob], count: int | None = None) -> Iterator[ShardResult]:
        """Yield one ShardResult per job as shards finish.

        ``jobs`` may be lazy (a generator that makes each shard's prompts): a job is taken when a worker asks
        for one, and a few are made ahead whenever no worker has anything to say (while the engines load, and
        while they generate), so the engines never wait for prompts that could have been made already. ``count`` (or
        ``len(jobs)``) caps how many workers start.
        """
        # Made ahead: enough that a worker asking for its next shard never waits, few enough that making them
        # does not compete with the engines for CPU while they load (measured on 2 vCPUs: 2,000 shards made
        # at once during the load doubled the time to the first shard).
        feed = Feed(jobs, ahead=self.workers * self.prefetch + 1)
        total = count if count is not None else (len(jobs) if isinstance(jobs, Sized) else None)
        if total == 0 or not feed.peek():
            return
        started = [self._start(i) for i in range(min(self.workers, total or self.workers))]
        self._started = started  # a replacement is appended: _pump reads which planned groups are busy
        sel = selectors.DefaultSelector()
        for w in started:
            sel.register(w.msgs, selectors.EVENT_READ, w)
        live = {w.index: w for w in started}
        next_poll = time.monotonic() + POLL_SECONDS
        try:
            while live:
                events = sel.select(timeout=0 if feed.can_make else POLL_SECONDS)
                for key, _ in events:
                    w = key.data  # the _Worker registered with its pipe above
                    if (yield from self._pump(w, feed)):  # EOF: the worker exited
                        yield from self._retire(w, sel, live)
                        self._replace_if_timed_out(w, feed, sel, live, started)
                made = not events and feed.can_make
                if made:
                    feed.make_one()  # nobody is waiting on us: make the next shard's prompts now
                if (not events and not made) or time.monotonic() >= next_poll:
                    # EOF alone misses a worker whose child (a forked engine process) still holds its pipe open.
                    next_poll = time.monotonic() + POLL_SECONDS
                    for w in [w for w in live.values() if w.proc.poll() is None]:
                        self._stop_if_overdue(w)
                    for w in [w for w in live.values() if w.proc.poll() is not None]:
                        w.stopping = True  # it is gone: a last 'ready' it wrote gets no shard
                        yield from self._pump(w, feed)  # what it wrote before exiting
                        yield from self._retire(w, sel, live)
                        self._replace_if_timed_out(w, feed, sel, live, started)
            reasons = "; ".join(dict.fromkeys(w.exit_reason for w in started if w.exit_reason))
            while (job := feed.pop()) is not None:  # every worker died before the queue drained
                yield ShardResult(
                    job.key,
                    -1,
                    "",
                    ok=False,
                    error=f"not run: every engine worker exited ({reasons or 'no reason given'})",
                )
        finally:
            sel.close()
            for w in started:
                _stop_process(w.proc)
                with contextlib.suppress(OSError):
                    w.msgs.close()

    def _pump(self, w: _Worker, queue: Feed) -> Generator[ShardResult, None, bool]:
        """Handle every message the worker has written so far, without blocking; True at EOF."""
        eof, data = False, b""
        while True:
            chunk = w.msgs.read(65536)
            if chunk is None:  # nothing more for now
                break
            if not chunk:
                eof = w.stopping = True  # a worker that is going gets no more shards
                break
            data += chunk
        if w.refused:
            return eof
        # Every message read is dispatched before any result goes to the caller: a worker's `ready` that came
        # with a `done` gets its next job now, not after the caller has recorded the finished shard.
        landed: list[ShardResult] = []
        try:
            for msg in read_messages(w, data):
                self.on_message(w.index, msg)
                busy = {o.group for o in self._started if o is not w and o.inflight and o.group is not None}
                if (done := dispatch(w, msg, queue, lambda m: self._send(w, m), busy=busy)) is not None:
                    landed.append(result_of(w, done))
        except ProtocolError as exc:
            self._refuse(w, exc)
        yield from landed
        return eof

    @staticmethod
    def _refuse(w: _Worker, exc: ProtocolError) -> None:
        """SIGKILL a worker that does not speak this version's protocol; its reaping fails what it holds."""
        w.refused = w.stopping = True
        w.fatal = f"worker {w.index} sent a message this version cannot read: {exc}"
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(w.proc.pid, signal.SIGKILL)

    def _retire(self, w: _Worker, sel: selectors.BaseSelector, live: dict[int, _Worker]) -> Iterator[ShardResult]:
        sel.unregister(w.msgs)
        w.msgs.close()
        del live[w.index]
        yield from self._reap(w)

    def _replace_if_timed_out(
        self, w: _Worker, feed: Feed, sel: selectors.BaseSelector, live: dict[int, _Worker], started: list[_Worker]
    ) -> None:
        """A worker stopped for a shard past the timeout is replaced while shards are left (same GPU slice)."""
        if not w.timed_out or not feed.peek():
            return
        fresh = self._start(w.index)
        started.append(fresh)
        sel.register(fresh.msgs, selectors.EVENT_READ, fresh)
        live[fresh.index] = fresh

    def _stop_if_overdue(self, w: _Worker) -> None:
        """SIGKILL a worker whose current shard has run past ``shard_timeout``; its reaping fails that shard."""
        if self.shard_timeout is None or not w.inflight or w.timed_out or w.refused:
            return
        if time.monotonic() - w.clock <= self.shard_timeout:
            return
        w.timed_out = True
        w.fatal = (
            f"shard {w.inflight[0]} was still generating after {self.shard_timeout:g} s (--timeout / "
            f"LLM_INFER_TIMEOUT); worker {w.index} was stopped, the next run retries the shard"
        )
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(w.proc.pid, signal.SIGKILL)

    def _reap(self, w: _Worker) -> Iterator[ShardResult]:
        code = w.proc.wait()
        why = w.fatal or _exit_reason(w.index, code)
        for key in w.inflight:
            yield ShardResult(
                key,
                w.index,
                w.gpus,
                ok=False,
                error=f"{why} while running this shard; log {w.log_path}:\n{_tail(w.log_path)}",
            )
        w.inflight.clear()
        if w.fatal or code != 0:
            w.exit_reason = why
            self.on_message(w.index, Exited(code=code, error=why, log=str(w.log_path)))


POLL_SECONDS = 1.0  # how often the pool checks for workers that exited without closing their pipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop_process(proc: subprocess.Popen[str], grace: float = 10.0) -> None:
    """Let the worker finish, then SIGKILL its process group: its engine's processes never outlive it."""
    try:
        if proc.stdin:
            proc.stdin.close()  # EOF on its stdin: a live worker stops
    except OSError:
        pass
    deadline = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # Even when the worker has exited: its group (it leads one) may still hold engine processes.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
