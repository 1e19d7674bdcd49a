"""The engine worker process: ``python -m llm_infer_dagster.runtime.worker <msg fd> <parent pid>``.

Started by :mod:`llm_infer_dagster.runtime.pool` with ``CUDA_VISIBLE_DEVICES`` already in its environment,
so torch/vLLM see only this worker's GPUs. It loads the engine once, then serves the shard jobs it reads on
stdin and reports on the message pipe, both in the messages of :mod:`llm_infer_dagster.runtime.messages`;
stdout/stderr go to the worker's log file. A message it cannot read (a pool of another version) is
``fatal``: it fails what it holds and exits.

It keeps at least ``prefetch`` shards in the engine, and more while the engine reports its batch would be
fuller (vLLM: fewer than 2 x max_num_seqs requests queued): the next shard's requests are queued before the
current one drains, and each shard is written (atomically) the moment its last request finishes.

An engine that raises while stepping fails the shards the error concerns (all it holds when it cannot say
which), and the worker carries on; an engine that is gone (vLLM's ``EngineDeadError``, or failing
``MAX_STEP_FAILURES`` steps in a row) fails what it holds, reports ``fatal`` and the worker exits.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, TextIO, cast

from llm_infer_dagster.runtime.messages import (
    TO_WORKER,
    Done,
    Failed,
    Fatal,
    FromWorker,
    Job,
    Loaded,
    ProtocolError,
    Ready,
    Setup,
    Stop,
    ToWorker,
    decode,
    encode,
)
from llm_infer_dagster.runtime.process_tree import take_group_down_with_parent

if TYPE_CHECKING:
    from collections.abc import Sequence

    from llm_infer_dagster.engines.base import Completion
    from llm_infer_dagster.engines.calibration import Tunable

_PROTOCOL = "the pool sent a message this worker cannot read"
MAX_STEP_FAILURES = 3  # consecutive failed engine steps after which the engine counts as unusable


def _engine_is_dead(exc: BaseException) -> bool:
    """vLLM's engine core is gone: nothing more can run in this engine (matched by name: no vLLM import)."""
    return type(exc).__name__ == "EngineDeadError"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _send(out: TextIO, msg: FromWorker) -> None:
    out.write(encode(msg))
    out.flush()


class LineReader:
    """The pool's messages from a raw fd, with an optional wait, so the engine can step while no job waits.

    Raises :class:`ProtocolError` for a line that is not a message to a worker."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False

    def read(self, timeout: float | None) -> list[ToWorker]:
        if self.eof:
            return []
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True  # the parent is gone: treat as stop
                return [Stop()]
            self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        msgs: list[ToWorker] = []
        for line in lines:
            if line.strip():
                msg = decode(line)
                if not isinstance(msg, TO_WORKER):
                    raise ProtocolError(f"{msg.kind!r} is a message from a worker, not to one")
                msgs.append(msg)
        return msgs


def serve(reader: LineReader, out: TextIO) -> None:

    from llm_infer_dagster.engines.base import BlockingStream, as_streaming
    from llm_infer_dagster.engines.calibration import calibration_for
    from llm_infer_dagster.engines.spec import load_engine
    from llm_infer_dagster.runtime.completions import ShardRequest, completions_frame, prepare_shard
    from llm_infer_dagster.shards.storage import atomic_write, read_parquet, store_path

    setup: ToWorker | None = None
    try:
        while setup is None:
            first = reader.read(None)
            if reader.eof:
                return
            setup = first[0] if first else None
        if not isinstance(setup, Setup):
            raise ProtocolError(f"the first message to a worker is 'setup', got {setup.kind!r}")
        if len(first) > 1:
            raise ProtocolError(f"{first[1].kind!r} came before the worker asked for anything")
    except ProtocolError as exc:
        _send(out, Fatal(error=f"{_PROTOCOL}: {exc}", trace=traceback.format_exc()))
        return
    spec, sampling, prefetch = setup.engine, setup.sampling, setup.prefetch
    t0 = time.perf_counter()
    try:
        engine = load_engine(spec)
    except Exception as exc:
        _send(
            out,
            Fatal(
                error=f"loading {spec.model_type} model {spec.model_path}: {type(exc).__name__}: {exc}",
                trace=traceback.format_exc(),
            ),
        )
        return
    _send(out, Loaded(seconds=round(time.perf_counter() - t0, 3), pid=os.getpid()))
    stream = as_streaming(engine)
    # task_settings' "calibrate": the first shards try batch widths; the rest run at the fastest
    calibration = calibration_for(engine, streaming=not isinstance(stream, BlockingStream)) if spec.calibrate else None
    inflight: dict[str, tuple[Job, ShardRequest, float]] = {}
    in_engine: list[str] = []  # shards submitted to the engine and not back yet, in submit order
    asked = 0
    stopping = False
    step_failures = 0

    def fail(key: str, error: str, trace: str) -> None:
        inflight.pop(key, None)
        if key in in_engine:
            in_engine.remove(key)
        _send(out, Failed(shard=key, error=error, trace=trace))

    def finish(key: str, completions: Sequence[Completion]) -> None:
        if key in in_engine:
            in_engine.remove(key)
        if key not in inflight:
            return  # already failed (an engine error that could not be pinned on one shard)
        job, request, started = inflight.pop(key)
        # an adapter's rows name the adapter folder applied to the base model
        model = spec.model_path if job.adapter is None else spec.lora_adapters.get(job.adapter, job.adapter)
        try:
            df = completions_frame(request, completions, sampling, model, spec.task)
            atomic_write(store_path(job.output), lambda tmp: df.write_parquet(tmp))
        except Exception as exc:
            _send(out, Failed(shard=key, error=_describe(exc), trace=traceback.format_exc()))
            return
        tuning = None
        if calibration is not None:
            was_done = calibration.done
            width = calibration.landed(int(df["completion_tokens"].sum()), time.perf_counter())
            if width is not None:
                cast("Tunable", engine).set_width(width)
            if calibration.done and not was_done:
                logging.getLogger("llm_infer_dagster.calibration").info(calibration.describe())
            tuning = calibration.summary()
        _send(
            out,
            Done(
                shard=key,
                rows=df.height,
                errors=int(df["error"].is_not_null().sum()),
                prompt_tokens=int(df["prompt_tokens"].sum()),
                completion_tokens=int(df["completion_tokens"].sum()),
                seconds=round(time.perf_counter() - started, 4),
                tuning=tuning,
            ),
        )

    def give_up(exc: BaseException) -> None:
        """The engine is unusable: fail what it holds and say why; the pool fails what it sends meanwhile."""
        error, trace = f"engine unusable: {_describe(exc)}", traceback.format_exc()
        for key in list(inflight):
            fail(key, error, trace)
        _send(out, Fatal(error=f"{spec.model_type} engine for {spec.model_path}: {error}", trace=trace))

    def refuse(exc: ProtocolError) -> None:
        """The pool said something this version cannot read: fail what is held, say why, and go."""
        error, trace = f"{_PROTOCOL}: {exc}", traceback.format_exc()
        for key in list(inflight):
            fail(key, error, trace)
        _send(out, Fatal(error=error, trace=trace))

    while True:
        # Ask for a shard while fewer than `prefetch` are held, or (one ask at a time) while the engine says
        # its batch would be fuller with more requests.
        if not stopping and (len(inflight) + asked < prefetch or (asked == 0 and stream.wants_more())):
            _send(out, Ready())
            asked += 1
        if stopping and not inflight:
            break
        msgs: list[Job | Stop] = []
        try:
            for msg in reader.read(None if not stream.has_pending() else 0):
                if not isinstance(msg, Job | Stop):
                    raise ProtocolError(f"a running worker takes 'job' or 'stop', got {msg.kind!r}")
                msgs.append(msg)
        except ProtocolError as exc:
            refuse(exc)
            _close_engine(engine)
            return
        for job in msgs:
            asked -= 1
            if isinstance(job, Stop):
                stopping = True
                continue
            key = job.shard
            try:
                request = prepare_shard(read_parquet(store_path(job.prompts)))
                inflight[key] = (job, request, time.perf_counter())
                if request.to_send:
                    if calibration is not None:
                        calibration.started(time.perf_counter())
                    # the base model is loaded once; each job picks its LoRA adapter (or none)
                    stream.submit(key, request.to_send, request.sampling(sampling), adapter=job.adapter)
                    in_engine.append(key)
                else:
                    finish(key, [])
            except Exception as exc:
                fail(key, _describe(exc), traceback.format_exc())
                if _engine_is_dead(exc):
                    give_up(exc)
                    _close_engine(engine)
                    return
        if stream.has_pending():
            # The shards this step works on, should it raise: a blocking stream runs the oldest one (with those
            # it joins to it); a streaming engine runs them all at once and cannot say whose request broke it.
            concerned = stream.upcoming() if isinstance(stream, BlockingStream) else list(in_engine)
            try:
                done = stream.step()
            except Exception as exc:
                step_failures += 1
                if _engine_is_dead(exc) or step_failures >= MAX_STEP_FAILURES:
                    give_up(exc)
                    _close_engine(engine)
                    return
                error = f"engine step failed: {_describe(exc)}"
                trace = traceback.format_exc()
                for key in concerned:
                    fail(key, error, trace)
                continue
            step_failures = 0
            for key, completions in done:
                finish(key, completions)
    _close_engine(engine)


def _close_engine(engine: Any) -> None:
    """Close the engine, best effort: the worker is leaving either way, and its exit frees the memory."""
    try:
        engine.close()
    except Exception:
        traceback.print_exc()


def main() -> None:
    # The pool starts each worker as its own process group, passing its message fd and its own pid.
    take_group_down_with_parent(int(sys.argv[2]) if len(sys.argv) > 2 else None)
    out = os.fdopen(int(sys.argv[1]), "w", buffering=1)
    # The package's notes (e.g. vLLM on CPU choosing eager mode at start) go to this worker's log file.
    package = logging.getLogger("llm_infer_dagster")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    serve(LineReader(sys.stdin.fileno()), out)


if __name__ == "__main__":
    main()
