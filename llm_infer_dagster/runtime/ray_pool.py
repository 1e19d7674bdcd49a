"""Run prompt shards through engine workers that are Ray actors, placed by Ray anywhere in a cluster.

The contract is :class:`~llm_infer_dagster.runtime.pool.WorkerPool`'s: ``run(jobs)`` yields one
:class:`ShardResult` per job the moment its shard is written, from one queue that every worker pulls from.
What differs is where a worker runs and what losing one costs: each worker is a
:class:`~llm_infer_dagster.runtime.ray_worker.WorkerActor` reserving ``tensor_parallel_size`` GPUs
(``num_gpus``), and an actor, node or worker process lost mid-shard puts its in-flight shards back at the
front of the queue for another (or a replacement) worker, up to :data:`RAY_SHARD_ATTEMPTS` attempts each.
A shard the engine itself fails (a ``failed`` message) or that runs past ``shard_timeout`` is not retried,
as locally; nor is anything after a worker's ``fatal`` (its engine did not load: it would not load elsewhere).

Ray is imported only here and only when a run sets ``ray_address`` (``ray_session``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_infer_dagster.engines.spec import EngineSpec
from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.runtime.dispatch import (
    Feed,
    ShardJob,
    ShardResult,
    WorkerState,
    dispatch,
    read_messages,
    result_of,
)
from llm_infer_dagster.runtime.messages import (
    Exited,
    Loaded,
    ProtocolError,
    Setup,
    ToWorker,
    WorkerEvent,
    encode,
)
from llm_infer_dagster.runtime.pool import _exit_reason

#: Attempts a shard gets when the worker running it is lost (actor killed, node gone, worker process killed).
RAY_SHARD_ATTEMPTS = 3
#: An actor Ray has not placed yet (no node with its GPUs/CPU free) is reported every this many seconds...
RAY_PLACEMENT_WARN_S = 60.0
#: ...and given up after this long (an autoscaler may take minutes to add a node): its worker is gone.
RAY_PLACEMENT_TIMEOUT_S = 1800.0
POLL_SECONDS = 1.0  # how long one poll of an actor waits for its worker to say something
LOCAL = "local"
#: Ray's switch for "this instance is one machine, no cluster": its node address is then the loopback one, and
#: every Ray server (GCS, raylet, workers) listens on 127.0.0.1 only. Set for ``local`` (nothing else can join).
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def check_ray_address(address: str) -> str:
    """``local``, ``auto``, ``ray://host:port`` or ``host:port``; SettingsError naming the value otherwise."""
    value = address.strip()
    if value in (LOCAL, "auto"):
        return value
    rest = value.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if sep and host and port.isdigit() and 0 < int(port) < 65536 and "/" not in rest:
        return value
    raise SettingsError(
        f"ray_address {address!r} is not a Ray address: give 'local' (a Ray instance on this machine), 'auto' "
        "(the cluster this machine is part of) or 'ray://host:port' / 'host:port' (--ray_address / "
        "LLM_INFER_RAY_ADDRESS / resources.settings.config.ray_address)"
    )


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SettingsError(
            "ray_address is set but Ray is not installed: pip install 'llm-infer-dagster[ray]' (or drop "
            "--ray_address / LLM_INFER_RAY_ADDRESS to run the workers as local processes)"
        ) from None
    return ray


@contextlib.contextmanager
def ray_session(address: str, *, num_gpus: int = 0) -> Iterator[Any]:
    """Ray, connected for the ``with`` block: ``local`` starts an instance on this machine (no dashboard)
    and shuts it down after; any other address connects to that cluster and disconnects after.
    An already connected Ray (a test's, a notebook's) is used as it is and left connected."""
    address = check_ray_address(address)
    with _loopback_only(address == LOCAL):
        ray = import_ray()
        if ray.is_initialized():
            yield ray
            return
        with _connected(ray, address, num_gpus):
            yield ray


@contextlib.contextmanager
def _connected(ray: Any, address: str, num_gpus: int) -> Iterator[None]:
    if address == LOCAL:
        ray.init(
            address="local",
            num_cpus=os.cpu_count() or 1,
            num_gpus=num_gpus,
            include_dashboard=False,  # no web UI; Ray's token authentication (on by default) guards its ports
            log_to_driver=False,
        )
    else:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise SettingsError(
                f"cannot connect to the Ray cluster at {address!r} ({exc}); check --ray_address / "
                "LLM_INFER_RAY_ADDRESS and that the cluster is up (`ray status` on its head node)"
            ) from None
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _loopback_only(enabled: bool) -> Iterator[None]:
    """While ``enabled``, a Ray instance started here listens on loopback only (Ray 2.60 binds every interface
    otherwise); as it was after, so a later session can still join a cluster.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when imported; if it was imported already, the value it
    read is set too (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``, what ``services.get_node_ip_address``
    consults), so the order of imports does not matter.
    """
    if not enabled:
        yield
        return
    old_env = os.environ.get(LOOPBACK_ONLY_ENV)
    os.environ[LOOPBACK_ONLY_ENV] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    old_flag = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if old_flag is not None:
        setattr(constants, "ENABLE_RAY_CLUSTER", False)  # noqa: B010 - a module attribute mypy cannot see
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop(LOOPBACK_ONLY_ENV, None)
        else:
            os.environ[LOOPBACK_ONLY_ENV] = old_env
        constants = sys.modules.get("ray._private.ray_constants")
        if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
            setattr(constants, "ENABLE_RAY_CLUSTER", True if old_flag is None else old_flag)  # noqa: B010


@dataclass(kw_only=True)
class _Actor(WorkerState):
    handle: Any
    where: dict[str, Any] = field(default_factory=dict)
    poll: Any = None  # the outstanding poll's ObjectRef
    started: float = field(default_factory=time.monotonic)
    placed: bool = False  # its first poll came back: Ray created it on some node
    warned: float = 0.0

    @property
    def label(self) -> str:
        """``actor 1a2b3c4d on node 5e6f7a8b (10.0.0.3)``: what the run's logs call this worker."""
        w = self.where
        if not w:
            return "actor (not placed)"
        return f"actor {w['actor_id'][:8]} on node {w['node_id'][:8]} ({w['ip']})"


class RayWorkerPool:
    """``workers`` engine workers as Ray actors; ``run(jobs)`` yields one ShardResult per job as shards finish."""

    def __init__(
        self,
        spec: EngineSpec,
        sampling: dict[str, Any],
        *,
        workers: int = 1,
        log_dir: Path,
        on_message: Callable[[int, WorkerEvent], None] | None = None,
        on_placed: Callable[[int, str], None] | None = None,
        on_pending: Callable[[int, str], None] | None = None,
        prefetch: int = 2,
        worker_command: Sequence[str] | None = None,
        shard_timeout: float | None = None,
        num_gpus: float = 0,
    ) -> None:
        self.spec, self.sampling, self.workers, self.log_dir = spec, sampling, workers, log_dir
        self.on_message = on_message or (lambda _i, _m: None)
        self.on_placed = on_placed or (lambda _i, _s: None)
        self.on_pending = on_pending or (lambda _i, _s: None)  # a worker Ray has not placed yet, and why
        self.prefetch, self.shard_timeout, self.num_gpus = prefetch, shard_timeout, num_gpus
        # None: each actor runs the worker with its own node's Python (every node has the same install)
        self.worker_command = list(worker_command) if worker_command else None
        self.attempts: dict[str, int] = {}  # shard -> workers lost while it ran
        self.lost: dict[str, str] = {}  # shard -> the last loss it saw

    def _start(self, ray: Any, index: int) -> _Actor:
        from llm_infer_dagster.runtime.ray_worker import WorkerActor

        env = {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
        if self.spec.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = "1"  # one CPU per actor (num_cpus=1): N engines on all cores thrash
        cls = ray.remote(num_cpus=1, num_gpus=self.num_gpus, max_concurrency=4, max_restarts=0)(WorkerActor)
        handle = cls.remote(self.worker_command, env, str(self.log_dir / f"worker-{index}.log"))
        actor = _Actor(index=index, handle=handle)
        handle.send.remote(
            encode(Setup(worker=index, engine=self.spec, sampling=self.sampling, prefetch=self.prefetch))
        )
        actor.poll = handle.poll.remote(POLL_SECONDS)
        return actor

    def run(self, jobs: Iterable[ShardJob], count: int | None = None) -> Iterator[ShardResult]:
        """Yield one ShardResult per job as shards finish (same contract as ``WorkerPool.run``)."""
        ray = import_ray()
        from ray.exceptions import RayActorError

        feed = Feed(jobs, ahead=self.workers * self.prefetch + 1)
        total = count if count is not None else (len(jobs) if isinstance(jobs, Sized) else None)
        if total == 0 or not feed.peek():
            return
        by_key: dict[str, ShardJob] = {}
        live = {i: self._start(ray, i) for i in range(min(self.workers, total or self.workers))}
        started = list(live.values())
        replacements = self.workers * RAY_SHARD_ATTEMPTS  # bounded: a cluster losing every actor ends the run
        reasons: list[str] = []
        try:
            while live:
                by_ref = {a.poll: a for a in live.values()}
                ready, _ = ray.wait(list(by_ref), num_returns=1, timeout=0 if feed.can_make else POLL_SECONDS)
                if not ready and feed.can_make:
                    feed.make_one()
                for ref in ready:
                    a = by_ref[ref]
                    a.placed = True
                    try:
                        data, code = ray.get(ref)
                    except RayActorError as exc:  # the actor, its node or its process is gone
                        gone = f"{a.label} was lost ({type(exc).__name__}: {_first_line(exc)})"
                        yield from self._lose(a, gone, feed, by_key, live, reasons)
                    else:
                        yield from self._handle_bytes(ray, a, data, feed, by_key)
                        if code is None:
                            a.poll = a.handle.poll.remote(POLL_SECONDS)
                            continue
                        why = a.fatal or _exit_reason(a.index, code) + f" on {a.label}"
                        if a.fatal or a.timed_out or code == 0:
                            yield from self._retire(ray, a, why, live, reasons)
                        else:  # its worker process was killed under a live actor: lost, like the actor
                            yield from self._lose(a, why, feed, by_key, live, reasons)
                    if a.index not in live and feed.peek() and replacements > 0 and (a.timed_out or not a.fatal):
                        replacements -= 1
                        fresh = self._start(ray, a.index)
                        started.append(fresh)
                        live[a.index] = fresh
                self._stop_overdue(ray, live)
                yield from self._check_placement(ray, live, reasons)
            why = "; ".join(dict.fromkeys(reasons)) or "no reason given"
            while (job := feed.pop()) is not None:  # every worker is gone before the queue drained
                yield self._give_up(job.key, f"not run: every engine worker exited ({why})")
        finally:
            for a in started:
                with contextlib.suppress(Exception):
                    ray.get(a.handle.stop.remote(), timeout=15)
                with contextlib.suppress(Exception):
                    ray.kill(a.handle)

    def _handle_bytes(
        self, ray: Any, a: _Actor, data: bytes, feed: Feed, by_key: dict[str, ShardJob]
    ) -> Iterator[ShardResult]:
        def send(msg: ToWorker) -> None:
            a.handle.send.remote(encode(msg))

        try:
            for msg in read_messages(a, data):
                self.on_message(a.index, msg)
                landed = dispatch(a, msg, feed, send, on_job=lambda job: by_key.__setitem__(job.key, job))
                if landed is not None:
                    yield result_of(a, landed, node=a.label)
                elif isinstance(msg, Loaded) and not a.where:
                    with contextlib.suppress(Exception):
                        a.where = ray.get(a.handle.where.remote(), timeout=30)
                    a.gpus = str(a.where.get("gpus") or "")
                    self.on_placed(a.index, f"{a.label}, gpus {a.where.get('gpus') or 'none'}")
        except ProtocolError as exc:
            a.fatal = f"worker {a.index} ({a.label}) sent a message this version cannot read: {exc}"
            a.stopping = True
            with contextlib.suppress(Exception):
                ray.kill(a.handle)

    def _give_up(self, key: str, error: str, a: _Actor | None = None) -> ShardResult:
        return ShardResult(key, a.index if a else -1, a.where.get("gpus", "") if a else "", ok=False, error=error,
                           node=a.label if a else "")  # fmt: skip

    def _retire(
        self, ray: Any, a: _Actor, why: str, live: dict[int, _Actor], reasons: list[str]
    ) -> Iterator[ShardResult]:
        """The worker exited (asked to, or after ``fatal``/a timeout): what it holds fails, not retried."""
        live.pop(a.index, None)
        for key in a.inflight:
            yield self._give_up(key, f"{why} while running this shard", a)
        a.inflight.clear()
        if a.fatal or a.timed_out:
            reasons.append(why)
            self.on_message(a.index, Exited(code=1, error=why, log=str(a.where.get("log", ""))))
        with contextlib.suppress(Exception):
            ray.kill(a.handle)

    def _lose(
        self,
        a: _Actor,
        why: str,
        feed: Feed,
        by_key: dict[str, ShardJob],
        live: dict[int, _Actor],
        reasons: list[str],
    ) -> Iterator[ShardResult]:
        """The actor, its node or its worker process is gone: its in-flight shards go back to the queue."""
        live.pop(a.index, None)
        with contextlib.suppress(Exception):
            import ray

            ray.kill(a.handle)  # an actor whose worker died still holds its CPUs/GPUs: free them for the next
        reasons.append(why)
        self.on_message(a.index, Exited(code=-1, error=why, log=str(a.where.get("log", ""))))
        for key in reversed(a.inflight):  # reversed: appendleft keeps their order at the queue's front
            self.attempts[key] = self.attempts.get(key, 0) + 1
            self.lost[key] = why
            if self.attempts[key] >= RAY_SHARD_ATTEMPTS:
                yield self._give_up(
                    key,
                    f"{self.attempts[key]} engine workers were lost while running this shard (RAY_SHARD_ATTEMPTS="
                    f"{RAY_SHARD_ATTEMPTS}); the last: {why}",
                    a,
                )
            else:
                feed.put_back(by_key[key])
        a.inflight.clear()

    def _check_placement(self, ray: Any, live: dict[int, _Actor], reasons: list[str]) -> Iterator[ShardResult]:
        """Say which workers Ray has not placed (and what the cluster has free); give up on them after a while."""
        now = time.monotonic()
        for a in list(live.values()):
            waited = now - a.started
            if a.placed or waited < RAY_PLACEMENT_WARN_S:
                continue
            needs = f"{self.num_gpus:g} GPU(s) and 1 CPU"
            free = "unknown"
            with contextlib.suppress(Exception):
                free = ", ".join(f"{k} {v:g}" for k, v in sorted(ray.available_resources().items())
                                 if not k.startswith(("node:", "memory", "object_store"))) or "nothing"  # fmt: skip
            if waited >= RAY_PLACEMENT_TIMEOUT_S:
                a.fatal = (
                    f"worker {a.index} was not placed by Ray in {RAY_PLACEMENT_TIMEOUT_S:g} s: no node had {needs} "
                    f"free (the cluster has free: {free}); add nodes with GPUs, or lower --tensor_parallel_size / "
                    "--workers (`ray status` shows what the cluster has)"
                )
                yield from self._retire(ray, a, a.fatal, live, reasons)
            elif now - a.warned >= RAY_PLACEMENT_WARN_S:
                a.warned = now
                self.on_pending(
                    a.index,
                    f"worker {a.index}: Ray has not placed its actor after {waited:.0f} s: it needs {needs}; the "
                    f"cluster has free: {free} (given up after {RAY_PLACEMENT_TIMEOUT_S:g} s)",
                )

    def _stop_overdue(self, ray: Any, live: dict[int, _Actor]) -> None:
        if self.shard_timeout is None:
            return
        for a in live.values():
            if a.inflight and not a.timed_out and time.monotonic() - a.clock > self.shard_timeout:
                a.timed_out = True
                a.fatal = (
                    f"shard {a.inflight[0]} was still generating after {self.shard_timeout:g} s (--timeout / "
                    f"LLM_INFER_TIMEOUT); worker {a.index} ({a.label}) was stopped, the next run retries the shard"
                )
                with contextlib.suppress(Exception):
                    ray.get(a.handle.stop.remote(0), timeout=15)  # kill its worker: the next poll sees it exit


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
