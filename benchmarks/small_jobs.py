"""A small job end to end: `llm-infer` against a bare script doing the same work, side by side.

    python benchmarks/small_jobs.py [--rows 10] [--max-tokens 16] [--repeats 3] [--work-dir /tmp/small-bench]

The bare script is what a user would write instead: start Python, load the tiny HF model with transformers,
generate greedily for every row in one batch, write the results as JSON, exit. `llm-infer` runs the same rows
(one JSONL file, the benchmark task of `scale.py`) with the HF engine on CPU into a fresh output dir (so a
fresh Dagster instance, registration, one run, the seed layout). Both are timed as whole commands, alternately,
`--repeats` times; the medians and their ratio are printed (goal: llm-infer within 2x of the bare script).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import REPO, env, write_input, write_task  # noqa: E402

BARE = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model_path, data, out, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = [json.loads(line) for line in open(data) if line.strip()]
prompts = ["Question: " + r["question"] + "\nAnswer:" for r in rows]
tok = AutoTokenizer.from_pretrained(model_path)
tok.padding_side = "left"
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
batch = tok(prompts, return_tensors="pt", padding=True)
with torch.inference_mode():
    ids = model.generate(**batch, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
texts = tok.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
json.dump([{"prompt": p, "response": t} for p, t in zip(prompts, texts)], open(out, "w"))
"""


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/small-bench"))
    args = ap.parse_args()

    from llm_infer_dagster.testing.tiny_model import build_tiny_model

    work = args.work_dir.resolve()
    model = build_tiny_model(work / "model")
    configs = work / "configs"
    write_task(configs, args.max_tokens)
    data = write_input(work / f"input-{args.rows}", args.rows, 1)
    bare_script = work / "bare.py"
    bare_script.write_text(BARE)
    times: dict[str, list[float]] = {"bare": [], "llm-infer": []}
    for r in range(args.repeats):
        for name in ("bare", "llm-infer") if r % 2 == 0 else ("llm-infer", "bare"):
            if name == "bare":
                cmd = [sys.executable, str(bare_script), str(model), str(data / "part-0000.jsonl"),
                       str(work / "bare-out.json"), str(args.max_tokens)]  # fmt: skip
            else:
                out = work / f"out-{r}-{time.time_ns()}"
                cmd = [sys.executable, "-m", "llm_infer_dagster", "--no_progress", "--task_name", "bench",
                       "--config_path", str(configs), "--input_path", str(data), "--output_path", str(out),
                       "--model_path", str(model), "--model_type", "hf", "--use_cpu", "--dtype", "float32"]  # fmt: skip
            times[name].append(run(cmd))
            print(f"repeat {r} {name:9} {times[name][-1]:6.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "small_jobs", "rows": args.rows, "max_tokens": args.max_tokens,
        "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 2) for k, v in med.items()},
        "llm_infer_over_bare": round(med["llm-infer"] / med["bare"], 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }  # fmt: skip
    print(json.dumps(result))
    print(f"\n{args.rows} rows: bare {med['bare']:.2f} s, llm-infer {med['llm-infer']:.2f} s, "
          f"ratio {result['llm_infer_over_bare']}x")  # fmt: skip


if __name__ == "__main__":
    main()
