"""Local worker processes vs Ray actors on the same shards: the overhead Ray adds, as a ratio.

Both sides run the real HF engine on a random-weight tiny Llama (built here, no model hub) on CPU, with the
same shards, sampling and worker count, alternating, ``--repeats`` times each; the best time of each counts.
Ray's own start-up (``ray.init`` of a local instance) is timed apart, once. Prints one JSON line, then a table.

    python benchmarks/ray_overhead.py [--shards 16] [--rows 32] [--workers 2] [--max-tokens 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import polars as pl

from llm_infer_dagster.engines.spec import EngineSpec
from llm_infer_dagster.runtime.dispatch import ShardJob
from llm_infer_dagster.runtime.pool import WorkerPool
from llm_infer_dagster.runtime.ray_pool import RayWorkerPool, ray_session
from llm_infer_dagster.shards.tables import PROMPT_SCHEMA
from llm_infer_dagster.testing.tiny_model import build_tiny_model


def make_jobs(root: Path, shards: int, rows: int) -> list[ShardJob]:
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    (root / "completions").mkdir(parents=True, exist_ok=True)
    jobs = []
    for s in range(shards):
        key = f"bench-{s:05d}"
        path = root / "prompts" / f"{key}.parquet"
        pl.DataFrame(
            {
                "record_id": [f"{key}:{i}" for i in range(rows)],
                "prompt": [f"Question {i} of shard {s}: what comes next?" for i in range(rows)],
                "is_chat": [False] * rows,
                "error": [None] * rows,
            },
            schema=PROMPT_SCHEMA,
        ).write_parquet(path)
        jobs.append(ShardJob(key, str(path), str(root / "completions" / f"{key}.parquet")))
    return jobs


def timed(pool: WorkerPool | RayWorkerPool, jobs: list[ShardJob]) -> float:
    t0 = time.perf_counter()
    results = list(pool.run(jobs))
    elapsed = time.perf_counter() - t0
    assert len(results) == len(jobs) and all(r.ok for r in results), [r.error for r in results if not r.ok]
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.workers)))
    root = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    model = str(build_tiny_model(root / "model"))
    spec = EngineSpec(model_type="hf", model_path=model, device="cpu", batch_size=32)
    sampling = {"temperature": 0, "max_tokens": args.max_tokens}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    local_times, ray_times = [], []
    with ray_session("local"):
        ray_start = time.perf_counter() - t0
        for r in range(args.repeats):
            jobs = make_jobs(root / f"local-{r}", args.shards, args.rows)
            local_times.append(timed(WorkerPool(spec, sampling, workers=args.workers, log_dir=root / "logs"), jobs))
            jobs = make_jobs(root / f"ray-{r}", args.shards, args.rows)
            pool = RayWorkerPool(spec, sampling, workers=args.workers, log_dir=root / "logs")
            ray_times.append(timed(pool, jobs))
    best_local, best_ray = min(local_times), min(ray_times)
    out = {
        "shards": args.shards, "rows": args.rows, "workers": args.workers, "max_tokens": args.max_tokens,
        "local_s": [round(t, 2) for t in local_times], "ray_s": [round(t, 2) for t in ray_times],
        "ray_init_s": round(ray_start, 2), "ratio": round(best_ray / best_local, 3),
        "ratio_with_init": round((best_ray + ray_start) / best_local, 3),
        "load_before": load, "load_after": os.getloadavg()[0],
    }  # fmt: skip
    print(json.dumps(out))
    print(f"local workers : best {best_local:.2f} s  {local_times}")
    print(f"Ray actors    : best {best_ray:.2f} s  {ray_times}  (+ {ray_start:.2f} s ray.init, once)")
    print(f"ratio Ray/local: {out['ratio']} (with Ray start-up: {out['ratio_with_init']})")


if __name__ == "__main__":
    main()
