"""The engine worker process: ``python -m llm_infer_dagster.workers.worker <msg fd>``.

Started by :mod:`llm_infer_dagster.workers.pool` with ``CUDA_VISIBLE_DEVICES`` already in its environment,
so torch/vLLM see only this worker's GPUs. It loads the engine once, then serves shard jobs read as JSON
lines on stdin and reports on the message pipe (JSON lines); stdout/stderr go to the worker's log file.

It keeps at least ``prefetch`` shards in the engine, and more while the engine reports its batch would be
fuller (vLLM: fewer than 2 x max_num_seqs requests queued): the next shard's requests are queued before the
current one drains, and each shard is written (atomically) the moment its last request finishes.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from llm_infer_dagster.process_tree import take_group_down_with_parent

DEFAULT_PREFETCH = 2


def _send(out: TextIO, **msg: Any) -> None:
    out.write(json.dumps(msg) + "\n")
    out.flush()


class LineReader:
    """JSON lines from a raw fd, with an optional wait, so the engine can step while no job is waiting."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False

    def read(self, timeout: float | None) -> list[dict[str, Any]]:
        if self.eof:
            return []
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True  # the parent is gone: treat as stop
                return [{"type": "stop"}]
            self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


def serve(reader: LineReader, out: TextIO) -> None:
    import polars as pl

    from llm_infer_dagster.engines.base import as_streaming
    from llm_infer_dagster.engines.spec import EngineSpec, load_engine
    from llm_infer_dagster.store import atomic_write
    from llm_infer_dagster.workers.completions import ShardRequest, completions_frame, prepare_shard

    spec_json: dict[str, Any] = {}
    while not spec_json:
        msgs = reader.read(None)
        if reader.eof:
            return
        spec_json = msgs[0] if msgs else {}
    spec = EngineSpec.from_dict(spec_json["engine"])
    sampling = spec_json["sampling"]
    prefetch = int(spec_json.get("prefetch", DEFAULT_PREFETCH))
    t0 = time.perf_counter()
    try:
        engine = load_engine(spec)
    except Exception as exc:
        _send(
            out,
            type="fatal",
            error=f"loading {spec.model_type} model {spec.model_path}: {type(exc).__name__}: {exc}",
            trace=traceback.format_exc(),
        )
        return
    _send(out, type="loaded", seconds=round(time.perf_counter() - t0, 3), pid=os.getpid())
    stream = as_streaming(engine)
    inflight: dict[str, tuple[dict[str, Any], ShardRequest, float]] = {}
    asked = 0
    stopping = False

    def finish(key: str, completions: list) -> None:
        job, request, started = inflight.pop(key)
        try:
            df = completions_frame(request, completions, sampling, spec.model_path)
            atomic_write(Path(job["output"]), lambda tmp: df.write_parquet(tmp))
        except Exception as exc:
            _send(out, type="failed", shard=key, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())
            return
        _send(
            out,
            type="done",
            shard=key,
            rows=df.height,
            errors=int(df["error"].is_not_null().sum()),
            prompt_tokens=int(df["prompt_tokens"].sum()),
            completion_tokens=int(df["completion_tokens"].sum()),
            seconds=round(time.perf_counter() - started, 4),
        )

    while True:
        # Ask for a shard while fewer than `prefetch` are held, or (one ask at a time) while the engine says
        # its batch would be fuller with more requests.
        if not stopping and (len(inflight) + asked < prefetch or (asked == 0 and stream.wants_more())):
            _send(out, type="ready")
            asked += 1
        if stopping and not inflight:
            break
        for job in reader.read(None if not stream.has_pending() else 0):
            asked -= 1
            if job.get("type") == "stop":
                stopping = True
                continue
            key = job["shard"]
            try:
                request = prepare_shard(pl.read_parquet(job["prompts"]))
                inflight[key] = (job, request, time.perf_counter())
                if request.to_send:
                    stream.submit(key, request.to_send, sampling)
                else:
                    finish(key, [])
            except Exception as exc:
                inflight.pop(key, None)
                _send(out, type="failed", shard=key, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())
        if stream.has_pending():
            for key, completions in stream.step():
                finish(key, completions)
    engine.close()


def main() -> None:
    take_group_down_with_parent()  # the pool starts each worker as its own process group
    out = os.fdopen(int(sys.argv[1]), "w", buffering=1)
    serve(LineReader(sys.stdin.fileno()), out)


if __name__ == "__main__":
    main()
