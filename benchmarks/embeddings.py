"""Embeddings per second through the platform (``llm-infer`` on an ``"task": "embed"`` folder) vs a bare engine
call, side by side in one run, on the same prompts and model.

  bare-call    the pooling engine's ``generate`` over all prompts, timed once the model is loaded (the ceiling)
  bare-script  a fresh process that loads the engine and embeds every prompt, timed end to end
  llm-infer    ``python -m llm_infer_dagster`` on a task folder whose rows are the prompts (``--shard_size``
               rows per shard), timed end to end: Dagster, the step process, the model load, Parquet shards,
               answers, the seed-layout export and the report

Prints one JSON line, then a markdown table, with the load average before and after.

    python benchmarks/embeddings.py [--model /work/models/SmolLM2-135M-Instruct] [--engine hf|vllm]
        [--prompts 256] [--shard-size 64] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORDS = [
    "the", "river", "city", "light", "old", "market", "morning", "quiet", "train", "paper", "music", "garden",
    "winter", "stone", "bright", "window", "north", "letter", "small", "voice", "field", "summer", "glass", "story",
    "road",
]  # fmt: skip

TASK_CONFIG = """import json, os
def get_file_list(input_path):
    return [os.path.join(input_path, "rows.jsonl")]
def read_file(file_path):
    with open(file_path) as f:
        return [json.loads(line) for line in f]
def format_prompt(org_data):
    return org_data["text"]
def extract_answer(embedding):
    return len(embedding)
"""


def prompts(n: int) -> list[str]:
    """Deterministic sentences of 8 to 47 words."""
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(8 + (i * 13) % 40)) + "." for i in range(n)]


def bare(args: argparse.Namespace, texts: list[str]) -> dict[str, float]:
    """Load the engine in this process, embed everything once; (load s, call s)."""
    from llm_infer_dagster.engines.spec import EngineSpec, load_engine

    t0 = time.perf_counter()
    engine = load_engine(EngineSpec(args.engine, args.model, task="embed", dtype="float32", batch_size=32))
    t1 = time.perf_counter()
    out = engine.generate(texts, {})
    t2 = time.perf_counter()
    engine.close()
    assert all(c.error is None and c.pooled for c in out)
    return {"load_s": t1 - t0, "call_s": t2 - t1}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="/work/models/SmolLM2-135M-Instruct")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--work-dir", default=None)
    p.add_argument("--_bare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    texts = prompts(args.prompts)
    if args._bare:  # the bare-script child: one JSON line
        print(json.dumps(bare(args, texts)))
        return
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-embed-"))
    shutil.rmtree(work, ignore_errors=True)
    task = work / "configs" / "embed_bench"
    (work / "data").mkdir(parents=True)
    task.mkdir(parents=True)
    (task / "task_config.py").write_text(TASK_CONFIG)
    (task / "task_settings.json").write_text(json.dumps({"task": "embed"}))
    (work / "data" / "rows.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    load_before = os.getloadavg()

    t0 = time.perf_counter()
    child = subprocess.run(
        [sys.executable, __file__, "--_bare", "--model", args.model, "--engine", args.engine, "--prompts",
         str(args.prompts)], capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    script_s = time.perf_counter() - t0
    inner = json.loads(child.stdout.strip().splitlines()[-1])

    t0 = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "llm_infer_dagster", "--no_progress", "--task_name", "embed_bench", "--config_path",
         str(work / "configs"), "--input_path", str(work / "data"), "--output_path", str(work / "out"),
         "--model_path", args.model, "--model_type", args.engine, "--use_cpu", "--dtype", "float32",
         "--shard_size", str(args.shard_size)], capture_output=True, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    platform_s = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(run.stderr[-3000:])
    load_after = os.getloadavg()
    n = args.prompts
    result = {
        "engine": args.engine, "model": args.model, "prompts": n, "shard_size": args.shard_size,
        "bare_call_s": round(inner["call_s"], 2), "bare_load_s": round(inner["load_s"], 2),
        "bare_script_s": round(script_s, 2), "llm_infer_s": round(platform_s, 2),
        "bare_call_emb_per_s": round(n / inner["call_s"], 1), "bare_script_emb_per_s": round(n / script_s, 1),
        "llm_infer_emb_per_s": round(n / platform_s, 1), "loadavg_before": load_before, "loadavg_after": load_after,
        "machine": f"{platform.node()} {os.cpu_count()} CPUs",
    }  # fmt: skip
    print(json.dumps(result))
    print("| variant | seconds | embeddings/s | vs bare script |")
    print("|---|---:|---:|---:|")
    for name, secs in (("bare call (model loaded)", inner["call_s"]), ("bare script (load + call)", script_s),
                       ("llm-infer (end to end)", platform_s)):  # fmt: skip
        print(f"| {name} | {secs:.2f} | {n / secs:.1f} | {script_s / secs:.2f} |")


if __name__ == "__main__":
    main()
