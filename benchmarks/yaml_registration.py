"""Registering a task.yaml task over one large Parquet file: seconds and peak RSS (issue 23).

Writes a Parquet file of ``--rows`` rows (``question``: str, ``gold``: int) and a task.yaml over it, then, each in
a fresh child process so its peak RSS is its own: the row count alone (the Parquet footer), and the full shard
registration (``plan_registration``: row count, file sha256, per-shard digests in polars). With ``--compare N``
it also registers the same N-row file through a Python task folder whose read_file returns the rows as dicts
(what registration does for any task with Python), side by side. With ``--arrow N`` it registers the same N rows
as one Parquet file and as a ``datasets.save_to_disk`` folder (memory-mapped Arrow; needs the datasets extra).

    python benchmarks/yaml_registration.py [--rows 10000000] [--shard-size 512] [--compare 1000000] [--arrow 1000000]

Prints one JSON line, then a table. No model, no Dagster.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TASK_YAML = """
dataset: {path: data}
prompt: "How much is {{ question }}? Answer with a number."
answer: {regex: "-?\\\\d+"}
score: {column: gold, tolerance: 0.000001}
"""

PY_TASK = """
import os
import polars as pl

HERE = os.path.dirname(os.path.abspath(__file__))


def get_file_list(input_path):
    root = input_path or os.path.join(HERE, "data")
    return sorted(os.path.join(root, f) for f in os.listdir(root))


def read_file(file_path):
    return pl.read_parquet(file_path).to_dicts()


def format_prompt(row):
    return f"How much is {row['question']}? Answer with a number."


def extract_answer(text):
    return text
"""


def make(root: Path, name: str, rows: int, python: bool, arrow: bool = False) -> Path:
    import polars as pl

    folder = root / "cfg" / name
    (folder / "data").mkdir(parents=True)
    n = pl.int_range(0, rows, eager=True)
    frame = pl.DataFrame({"question": n.cast(pl.String) + " + 1", "gold": n + 1})
    if arrow:
        import datasets

        datasets.disable_progress_bars()
        datasets.Dataset(frame.to_arrow()).save_to_disk(str(folder / "data"))
    else:
        frame.write_parquet(folder / "data" / "part.parquet", row_group_size=100_000)
    if python:
        (folder / "task_config.py").write_text(textwrap.dedent(PY_TASK))
    else:
        (folder / "task.yaml").write_text(textwrap.dedent(TASK_YAML))
    return root / "cfg"


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(cfg: str, name: str, what: str, shard_size: int) -> None:
    """One measurement in this process: prints seconds and peak RSS (MiB) as JSON."""
    from llm_infer_dagster.shards.manifest import plan_registration
    from llm_infer_dagster.shards.store import TaskStore
    from llm_infer_dagster.tasks.loader import load_task

    base = peak_rss_mib()
    started = time.perf_counter()
    task = load_task(cfg, name)
    if what == "count":
        files = task.list_files(task.input_path(None))
        rows = sum(task.count_rows(f) or 0 for f in files)
        shards = 0
    else:
        store = TaskStore(Path(cfg).parent / "out", name)
        reg = plan_registration(task, store, task.input_path(None), shard_size=shard_size)
        rows, shards = sum(s.rows for s in reg.manifest.shards.values()), len(reg.manifest.shards)
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mib": round(peak), "import_rss_mib": round(base),
                      "rows": rows, "shards": shards}))  # fmt: skip


def measure(cfg: Path, name: str, what: str, shard_size: int) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(cfg), name, what, str(shard_size)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--shard-size", type=int, default=512)
    p.add_argument("--compare", type=int, default=0, help="also register an N-row file both ways (0: no)")
    p.add_argument("--arrow", type=int, default=0, help="also register N rows as Parquet and save_to_disk (0: no)")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        cfg, name, what, size = args.child
        child(cfg, name, what, int(size))
        return
    load_before = os.getloadavg()[0]
    results: dict[str, object] = {"rows": args.rows, "shard_size": args.shard_size}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make(Path(tmp) / "big", "big", args.rows, python=False)
        results["parquet_mib"] = round((cfg / "big" / "data" / "part.parquet").stat().st_size / 2**20, 1)
        results["yaml_count"] = measure(cfg, "big", "count", args.shard_size)
        results["yaml_register"] = measure(cfg, "big", "register", args.shard_size)
        if args.compare:
            for kind, python in (("yaml", False), ("python", True)):
                small = make(Path(tmp) / f"cmp_{kind}", "cmp", args.compare, python=python)
                results[f"compare_{kind}_register"] = measure(small, "cmp", "register", args.shard_size)
        if args.arrow:
            for kind, arrow in (("parquet", False), ("save_to_disk", True)):
                same = make(Path(tmp) / f"arrow_{kind}", "rows", args.arrow, python=False, arrow=arrow)
                results[f"{kind}_count"] = measure(same, "rows", "count", args.shard_size)
                results[f"{kind}_register"] = measure(same, "rows", "register", args.shard_size)
    results["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(results))
    print(f"{'what':<34}{'rows':>12}{'seconds':>10}{'peak RSS MiB':>14}{'after imports':>14}")
    for key, value in results.items():
        if isinstance(value, dict):
            print(
                f"{key:<34}{value['rows']:>12}{value['seconds']:>10}{value['peak_rss_mib']:>14}{value['import_rss_mib']:>14}"
            )
    print(f"Parquet file {results['parquet_mib']} MiB; load average (1 min) before/after: {results['load_avg_1m']}")


if __name__ == "__main__":
    main()
