"""HF backend throughput: the seed's one-prompt-at-a-time loop vs HFEngine's batched generate.

Both sides load the same tiny model from disk and decode the same prompts greedily, so the outputs must
match (checked and reported). After a warm-up the two sides run alternately ``--repeats`` times; the best
time of each counts, since on a shared machine noise only ever slows a run down (the 1-minute load
average before and after is reported).

    python benchmarks/hf_batched_vs_seed.py [--prompts 256] [--max-tokens 32] [--batch-size 64]
        [--hidden-size 128] [--layers 2] [--heads 2] [--repeats 3] [--model-dir DIR]

Prints one JSON line (for BENCHMARKS.md tooling), then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_infer_dagster.engines.hf import HFEngine
from llm_infer_dagster.testing.tiny_model import build_tiny_model, corpus


def make_prompts(count: int) -> list[str]:
    """QA-style prompts of mixed length (about 10 to 60 tokens), the shape of a typical task."""
    lines = corpus()
    prompts = []
    for i in range(count):
        context = " ".join(lines[(i * 7 + k) % len(lines)] for k in range(i % 3))
        question = lines[(i * 13) % len(lines)]
        prompts.append(f"{context}\nQuestion: {question}\nAnswer:".lstrip())
    return prompts


def load_seed_loop(model_path: str, max_tokens: int) -> Callable[[list[str]], tuple[list[str], int]]:
    """The seed's HF path: one prompt at a time through ``model.generate``, first sample only.

    Returns a function that runs the loop over prompts and gives (responses, new tokens).
    """
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True, dtype=torch.float32).eval()
    eos = set(model.generation_config.eos_token_id or [])

    def run(batch: list[str]) -> tuple[list[str], int]:
        responses, new_tokens = [], 0
        for prompt in batch:
            inputs = tokenizer(prompt, return_tensors="pt")
            with torch.no_grad():
                output = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
            generated = output[0][inputs["input_ids"].shape[1] :].tolist()
            ends = [i for i, t in enumerate(generated) if t in eos]
            new_tokens += ends[0] + 1 if ends else len(generated)
            responses.append(tokenizer.decode(generated, skip_special_tokens=True))
        return responses, new_tokens

    return run


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "llm-infer-bench-models")
    args = parser.parse_args()

    model_path = str(
        build_tiny_model(
            args.model_dir / f"llama-h{args.hidden_size}-l{args.layers}-a{args.heads}",
            hidden_size=args.hidden_size,
            num_layers=args.layers,
            num_heads=args.heads,
        )
    )
    prompts = make_prompts(args.prompts)
    params = {"temperature": 0, "max_tokens": args.max_tokens}

    run_seed = load_seed_loop(model_path, args.max_tokens)  # (a) the seed's loop
    engine = HFEngine(model_path, batch_size=args.batch_size)  # (b) HFEngine, all prompts in one call
    run_seed(prompts[:4])  # warm-up both
    engine.generate(prompts[: args.batch_size], params)

    # Interleaved, so both sides see the same background load; the best time of each side counts.
    load_before = os.getloadavg()[0]
    seed_times, engine_times = [], []
    for _ in range(args.repeats):
        seconds, (seed_texts, seed_tokens) = timed(lambda: run_seed(prompts))
        seed_times.append(seconds)
        seconds, completions = timed(lambda: engine.generate(prompts, params))
        engine_times.append(seconds)
    load_after = os.getloadavg()[0]
    seed_s, engine_s = min(seed_times), min(engine_times)
    engine_tokens = sum(c.completion_tokens for c in completions)
    matches = sum(c.response == t for c, t in zip(completions, seed_texts, strict=True))
    engine.close()

    prompt_tokens = sum(c.prompt_tokens for c in completions)
    result = {
        "benchmark": "hf_batched_vs_seed",
        "model": {"hidden_size": args.hidden_size, "layers": args.layers, "heads": args.heads},
        "prompts": len(prompts),
        "mean_prompt_tokens": round(prompt_tokens / len(prompts), 1),
        "max_tokens": args.max_tokens,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "seed_s": round(seed_s, 3),
        "seed_prompts_per_s": round(len(prompts) / seed_s, 1),
        "seed_new_tokens_per_s": round(seed_tokens / seed_s, 1),
        "engine_s": round(engine_s, 3),
        "engine_prompts_per_s": round(len(prompts) / engine_s, 1),
        "engine_new_tokens_per_s": round(engine_tokens / engine_s, 1),
        "speedup": round(seed_s / engine_s, 2),
        "speedup_per_repeat": [round(a / b, 1) for a, b in zip(seed_times, engine_times, strict=True)],
        "new_tokens": {"seed": seed_tokens, "engine": engine_tokens},
        "outputs_identical": f"{matches}/{len(prompts)}",
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m": [round(load_before, 2), round(load_after, 2)],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    print()
    print(f"{'':22}{'seed loop':>14}{'HFEngine':>14}")
    print(f"{'wall time (s)':22}{seed_s:>14.3f}{engine_s:>14.3f}")
    print(f"{'prompts/s':22}{len(prompts) / seed_s:>14.1f}{len(prompts) / engine_s:>14.1f}")
    print(f"{'new tokens/s':22}{seed_tokens / seed_s:>14.1f}{engine_tokens / engine_s:>14.1f}")
    print(f"{'new tokens':22}{seed_tokens:>14}{engine_tokens:>14}")
    print(f"speedup {seed_s / engine_s:.1f}x; identical outputs {matches}/{len(prompts)}")


if __name__ == "__main__":
    main()
