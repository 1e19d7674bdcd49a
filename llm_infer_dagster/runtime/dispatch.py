"""What a pool does with its workers' messages, whatever carries them (a local pipe, a Ray actor's poll).

Both pools (``pool.py``: local processes, ``ray_pool.py``: Ray actors) are one dispatcher: a worker says
``ready`` and gets the next shard or ``stop``, ``done``/``failed`` become a :class:`ShardResult` the moment
they arrive, ``fatal`` is kept for the worker's exit. The pools add only how messages travel, how a worker
is started, watched and replaced. No Dagster, no engine here.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, assert_never

from llm_infer_dagster.engines.prefix_order import pick
from llm_infer_dagster.runtime.messages import (
    FROM_WORKER,
    Done,
    Failed,
    Fatal,
    FromWorker,
    Job,
    Loaded,
    ProtocolError,
    Ready,
    Stop,
    ToWorker,
    decode,
)


@dataclass(frozen=True)
class ShardJob:
    key: str  # unique among the run's jobs (one shard may be a job per LoRA adapter)
    prompts: str  # path of the prompts shard
    output: str  # where the completions shard goes
    adapter: str | None = None  # the LoRA adapter of the pool's engine spec it runs with (None: the base model)
    group: int | None = None  # prefix-planning group: shards sharing prompt prefixes, kept on one worker


@dataclass
class ShardResult:
    key: str
    worker: int
    gpus: str
    ok: bool
    rows: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    node: str = ""  # on Ray: which actor on which node ran it (empty for a local worker)
    tuning: dict[str, Any] | None = None  # the worker's calibration as of this shard (None: calibration off)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(kw_only=True)
class WorkerState:
    """What a pool keeps of each worker: its shards in flight (oldest first), their clock, and its fate."""

    index: int
    gpus: str = ""
    buffer: bytes = b""
    inflight: list[str] = field(default_factory=list)
    fatal: str | None = None
    stopping: bool = False
    clock: float = 0.0  # when its oldest in-flight shard started to be the one it works on (for the timeout)
    timed_out: bool = False
    group: int | None = None  # the prefix-planning group of the last job it was given


def read_messages(state: WorkerState, data: bytes) -> Iterator[FromWorker]:
    """The worker's complete lines in ``state.buffer + data``, decoded (a partial line waits in the buffer).

    ProtocolError for a line that is not a message from a worker of this version.
    """
    state.buffer += data
    *lines, state.buffer = state.buffer.split(b"\n")
    for line in lines:
        if line.strip():
            msg = decode(line)
            if not isinstance(msg, FROM_WORKER):
                raise ProtocolError(f"{msg.kind!r} is a message to a worker, not from one")
            yield msg


def dispatch(
    state: WorkerState,
    msg: FromWorker,
    feed: Feed,
    send: Callable[[ToWorker], None],
    on_job: Callable[[ShardJob], None] | None = None,
    busy: set[int] | None = None,
) -> Done | Failed | None:
    """Act on one message: hand a ready worker its next shard (or ``stop``), note a fatal error; a shard's
    ``done``/``failed`` is returned for the pool to report (None for every other message).

    ``busy``: the prefix-planning groups other workers are on; a worker keeps to its own group, or takes
    one nobody runs, so shards that share prefixes meet in one engine's cache.
    """
    match msg:
        case Ready():
            job = None if state.stopping else feed.pop(state.group, busy or set())
            if job is not None:
                state.group = job.group
                if not state.inflight:
                    state.clock = time.monotonic()
                state.inflight.append(job.key)
                if on_job is not None:
                    on_job(job)
                send(Job(shard=job.key, prompts=job.prompts, output=job.output, adapter=job.adapter))
            elif not state.stopping:
                state.stopping = True
                send(Stop())
        case Done() | Failed():
            if msg.shard in state.inflight:
                state.inflight.remove(msg.shard)
                state.clock = time.monotonic()  # the next in-flight shard's time starts now
            return msg
        case Fatal():
            state.fatal = msg.error
        case Loaded():
            pass
        case _:
            assert_never(msg)
    return None


def result_of(state: WorkerState, msg: Done | Failed, node: str = "") -> ShardResult:
    """The :class:`ShardResult` a worker's ``done``/``failed`` stands for."""
    if isinstance(msg, Failed):
        return ShardResult(msg.shard, state.index, state.gpus, ok=False, error=msg.error, node=node)
    return ShardResult(
        msg.shard, state.index, state.gpus, ok=True, rows=msg.rows, errors=msg.errors,
        prompt_tokens=msg.prompt_tokens, completion_tokens=msg.completion_tokens, seconds=msg.seconds, node=node,
        tuning=msg.tuning,
    )  # fmt: skip


class Feed:
    """Jobs taken in order from a (possibly lazy) iterable, some made ahead of need."""

    def __init__(self, jobs: Iterable[ShardJob], ahead: int) -> None:
        self._jobs = iter(jobs)
        self._made: deque[ShardJob] = deque()
        self._exhausted = False
        self.ahead = ahead

    @property
    def can_make(self) -> bool:
        """Whether to make one more now: not all made yet, and fewer than ``ahead`` waiting."""
        return not self._exhausted and len(self._made) < self.ahead

    def make_one(self) -> None:
        if self._exhausted:
            return
        try:
            self._made.append(next(self._jobs))
        except StopIteration:
            self._exhausted = True

    def peek(self) -> bool:
        """True if there is at least one job (making it if need be)."""
        if not self._made:
            self.make_one()
        return bool(self._made)

    def pop(self, prefer: int | None = None, busy: set[int] | frozenset[int] = frozenset()) -> ShardJob | None:
        """The next job: of group ``prefer`` if one is made, else of a group not in ``busy``, else the first."""
        if not self.peek():
            return None
        if prefer is None and not busy:
            return self._made.popleft()
        i = pick(self._made, lambda j: j.group, prefer, set(busy))
        job = self._made[i]
        del self._made[i]
        return job

    def put_back(self, job: ShardJob) -> None:
        """``job`` goes first again (its worker was lost: another takes it next)."""
        self._made.appendleft(job)
