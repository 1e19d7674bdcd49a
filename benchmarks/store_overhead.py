"""The shard store on a local dir vs an fsspec URL: what a shard's writes and reads cost on each.

Per backend, the same shards go through the calls a run makes of its store: ``write_frame`` of a completions
frame (``--rows`` rows of ``--chars`` character responses), ``has`` and ``read_frame`` of each, then one
``model_report`` over all of them. Backends: a local dir (today's path code), ``file://`` (fsspec, temp +
rename) and S3 (``s3://``, moto's server on 127.0.0.1: the client path plus a local Python server, not a
network). Alternating, ``--repeats`` times; the best of each counts. Prints one JSON line, then a table.

    python benchmarks/store_overhead.py [--shards 200] [--rows 500] [--chars 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from s3_server import S3Server  # noqa: E402

from llm_infer_dagster.shards.report import model_report  # noqa: E402
from llm_infer_dagster.shards.sharding import file_id, shard_key  # noqa: E402
from llm_infer_dagster.shards.store import TaskStore  # noqa: E402
from llm_infer_dagster.shards.tables import COMPLETION_SCHEMA  # noqa: E402


def frame(rows: int, chars: int, seed: int) -> pl.DataFrame:
    text = [(f"answer {seed}-{i} " * (chars // 10 + 1))[:chars] for i in range(rows)]
    return pl.DataFrame(
        {
            "record_id": [f"f:{seed}:{i}" for i in range(rows)],
            "response": text,
            "responses": [[t] for t in text],
            "finish_reason": ["length"] * rows,
            "finish_reasons": [["length"]] * rows,
            "prompt_tokens": [64] * rows,
            "completion_tokens": [chars // 4] * rows,
            "error": [None] * rows,
            "model": ["bench"] * rows,
            "sampling_params": ["{}"] * rows,
        },
        schema=COMPLETION_SCHEMA,
    )


def one_pass(store: TaskStore, frames: list[pl.DataFrame]) -> dict[str, float]:
    keys = [shard_key(file_id("bench", "data.jsonl"), i) for i in range(len(frames))]
    t0 = time.perf_counter()
    for key, df in zip(keys, frames, strict=True):
        store.write_frame("completions", key, df)
    t1 = time.perf_counter()
    for key in keys:
        assert store.has("completions", key)
        assert store.read_frame("completions", key).height == frames[0].height
    t2 = time.perf_counter()
    report = model_report("bench", [], [store.shard_path("completions", k) for k in keys])
    t3 = time.perf_counter()
    assert report.prompt_tokens == 64 * frames[0].height * len(frames)
    return {"write": t1 - t0, "read": t2 - t1, "report": t3 - t2, "total": t3 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=200)
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--chars", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    frames = [frame(args.rows, args.chars, s) for s in range(args.shards)]
    root = Path(tempfile.mkdtemp(prefix="store-overhead-"))
    server = S3Server().start()
    os.environ.update(server.env)
    backends: dict[str, Callable[[int], str]] = {
        "local dir": lambda r: str(root / f"local-{r}"),
        "file://": lambda r: f"file://{root}/file-{r}",
        "s3:// (moto, loopback)": lambda r: f"{server.make_bucket(f'bench-{uuid.uuid4().hex[:8]}')}/run",
    }
    times: dict[str, list[dict[str, float]]] = {name: [] for name in backends}
    load = os.getloadavg()[0]
    try:
        for r in range(args.repeats):
            for name, location in backends.items():
                store = TaskStore(location(r), "bench", state_dir=root / "state")
                times[name].append(one_pass(store, frames))
    finally:
        server.stop()
    best = {name: min(runs, key=lambda t: t["total"]) for name, runs in times.items()}
    base = best["local dir"]["total"]
    out = {
        "shards": args.shards, "rows": args.rows, "chars": args.chars, "repeats": args.repeats,
        "best": {n: {k: round(v, 3) for k, v in b.items()} for n, b in best.items()},
        "ratio_to_local": {n: round(b["total"] / base, 2) for n, b in best.items()},
        "load_before": load, "load_after": os.getloadavg()[0],
    }  # fmt: skip
    print(json.dumps(out))
    head = f"{'backend':<24} {'write':>8} {'read':>8} {'report':>8} {'total':>8} {'ratio':>6}"
    print(f"{head}  (best of {args.repeats}, s)")
    for name, b in best.items():
        print(f"{name:<24} {b['write']:8.2f} {b['read']:8.2f} {b['report']:8.2f} {b['total']:8.2f} "
              f"{b['total'] / base:6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
