"""Self-tuning batch width (``"calibrate": true`` in task_settings.json) vs the engine's defaults, side by side.

The same ``llm-infer`` job twice per round, calibration off and on, alternating which goes first: the demo model
(SmolLM2-135M-Instruct, ``llm-infer demo-model``) or ``--model``, ``--prompts`` chat prompts asking for lists of
varied length (outputs end at EOS or ``--max-tokens``), greedy, ``--shard-size`` rows a shard, on CPU. Each run
is one fresh command timed from start to exit (model load and calibration included). Prints per run: wall
seconds, output tokens, output tok/s over the whole command, the width calibration chose and its trials; and
how many completions equal the uncalibrated run's (greedy: all should).

    python benchmarks/calibration.py [--model-type vllm|hf] [--prompts 1024] [--max-tokens 96]
        [--shard-size 32] [--rounds 2] [--model PATH] [--model-args JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from llm_infer_dagster.testing.prompt_task import completions_in_order, write_prompt_task  # noqa: E402

TOPICS = ["rivers", "birds", "prime numbers", "kitchen tools", "planets", "colors", "sports", "trees", "metals"]


def prompts(count: int) -> list[list[dict[str, str]]]:
    """Chat prompts whose answers differ in length (1 to 12 items of a list)."""
    return [
        [{"role": "user", "content": f"List {1 + i % 12} {TOPICS[i % len(TOPICS)]}, one per line, no comments."}]
        for i in range(count)
    ]


def run(task_root: Path, out: Path, model: str, model_type: str, shard_size: int, model_args: str | None
        ) -> dict[str, Any]:  # fmt: skip
    cmd = [sys.executable, "-m", "llm_infer_dagster", "--no_progress", "--model_path", model,
           "--model_type", model_type, "--use_cpu", "--task_name", "bench", "--config_path", str(task_root),
           "--output_path", str(out), "--shard_size", str(shard_size),
           *(["--model_args", model_args] if model_args else [])]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_INFER_", "DAGSTER_HOME"))}
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"llm-infer failed:\n{done.stderr[-3000:]}")
    return {"wall": wall, "out": out}


def tuning_of(out: Path) -> dict[str, Any] | None:
    """The last calibration metadata of the run's completions (None: calibration was off)."""
    os.environ["DAGSTER_HOME"] = str(out / ".dagster")
    from dagster import AssetKey, DagsterInstance

    inst = DagsterInstance.get()
    records = inst.fetch_materializations(AssetKey(["bench", "completions"]), limit=10000).records
    found = sorted(
        (r.timestamp, r.asset_materialization.metadata["calibration"].value)
        for r in records
        if r.asset_materialization is not None and "calibration" in r.asset_materialization.metadata
    )
    inst.dispose()
    return found[-1][1] if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-type", choices=["vllm", "hf"], default="vllm")
    ap.add_argument("--model", default=None, help="a local HF model folder (default: llm-infer demo-model)")
    ap.add_argument("--prompts", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model-args", default=None, help='vLLM engine arguments as JSON, e.g. a small KV cache: '
                    '\'{"kv_cache_memory_bytes": 134217728}\'')  # fmt: skip
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # each row as it is measured
    if args.model is None:
        from llm_infer_dagster.models.demo_model import demo_model_path

        args.model = str(demo_model_path())
    work = Path(tempfile.mkdtemp(prefix="calibration-bench-"))
    count = args.prompts
    sampling = {"temperature": 0, "max_tokens": args.max_tokens}
    roots = {}
    for mode in ("off", "on"):
        roots[mode] = work / f"tasks-{mode}"
        write_prompt_task(roots[mode] / "bench", prompts(count), sampling)
        (roots[mode] / "bench" / "task_settings.json").write_text(json.dumps({"calibrate": mode == "on"}))
    print(f"# {platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; {args.model_type}, {count} "
          f"prompts, max_tokens {args.max_tokens}, shard size {args.shard_size}, model {args.model}, "
          f"model_args {args.model_args}")  # fmt: skip
    print("| round | calibration | wall s | output tokens | output tok/s | width (trials, tok/s) | same | load |")
    print("|---|---|---:|---:|---:|---|---:|---:|")
    for r in range(args.rounds):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        texts: dict[str, list[str]] = {}
        lines = {}
        for mode in order:
            load = os.getloadavg()[0]
            res = run(roots[mode], work / f"out-{mode}-{r}", args.model, args.model_type, args.shard_size,
                      args.model_args)  # fmt: skip
            rows = completions_in_order(res["out"], count)
            texts[mode] = [row["model_response_raw"] for row in rows]
            tokens = sum(
                int(pl.read_parquet(f)["completion_tokens"].sum())
                for f in (res["out"] / "bench" / "completions").glob("*.parquet")
            )
            tuning = tuning_of(res["out"])
            width = (
                f"{tuning['knob']} {tuning['width']} ({tuning['state']}; "
                + ", ".join(f"{w}: {v:.0f}" for w, v in tuning["trials"].items())
                + ")"
                if tuning
                else "default"
            )
            lines[mode] = (res["wall"], tokens, width, load)
        same = sum(a == b for a, b in zip(texts["off"], texts["on"], strict=True))
        for mode in ("off", "on"):
            wall, tokens, width, load = lines[mode]
            print(f"| {r + 1} | {mode} | {wall:.1f} | {tokens} | {tokens / wall:.0f} | {width} | "
                  f"{same}/{count} | {load:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
