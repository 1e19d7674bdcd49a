"""The engine worker process: ``python -m llm_infer_dagster.workers.worker <msg fd>``.

Started by :mod:`llm_infer_dagster.workers.pool` with ``CUDA_VISIBLE_DEVICES`` already in its environment,
so torch/vLLM see only this worker's GPUs. It loads the engine once, then serves shard jobs read as JSON
lines on stdin, writing each completions shard atomically and reporting on the message pipe (JSON lines).
stdout/stderr belong to libraries and go to the worker's log file.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO


def _send(out: TextIO, **msg: Any) -> None:
    out.write(json.dumps(msg) + "\n")
    out.flush()


def serve(spec_json: dict[str, Any], jobs: TextIO, out: TextIO) -> None:
    import polars as pl

    from llm_infer_dagster.engines.spec import EngineSpec, load_engine
    from llm_infer_dagster.store import atomic_write
    from llm_infer_dagster.workers.completions import complete_shard

    spec = EngineSpec.from_dict(spec_json["engine"])
    sampling = spec_json["sampling"]
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
    _send(out, type="ready")
    for line in jobs:
        job = json.loads(line)
        if job.get("type") == "stop":
            break
        key = job["shard"]
        t1 = time.perf_counter()
        try:
            prompts = pl.read_parquet(job["prompts"])
            df = complete_shard(engine, prompts, sampling, spec.model_path)
            atomic_write(Path(job["output"]), lambda tmp, df=df: df.write_parquet(tmp))
        except Exception as exc:
            _send(out, type="failed", shard=key, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())
        else:
            _send(
                out,
                type="done",
                shard=key,
                rows=df.height,
                errors=int(df["error"].is_not_null().sum()),
                prompt_tokens=int(df["prompt_tokens"].sum()),
                completion_tokens=int(df["completion_tokens"].sum()),
                seconds=round(time.perf_counter() - t1, 4),
            )
        _send(out, type="ready")
    engine.close()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies, so no orphan holds a GPU."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(1)


def main() -> None:
    _die_with_parent()
    msg_fd = int(sys.argv[1])
    out = os.fdopen(msg_fd, "w", buffering=1)
    spec_json = json.loads(sys.stdin.readline())
    serve(spec_json, sys.stdin, out)


if __name__ == "__main__":
    main()
