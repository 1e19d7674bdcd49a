"""HF backend: HFEngine at its default settings (continuous batching) vs a bare static-batch ``generate`` loop.

Issue 21: with static batches the HF engine waited for each batch's longest row, so its default batch size
of 32 was slower than 8 on real prompts whose outputs run 1 to 256 tokens. This runs, in one process and
on the same prompts, greedy fp32:

- ``engine``: ``HFEngine(model).generate(all prompts)`` at the engine's defaults (``batch_size`` 32);
- ``bare-B`` for each ``--batch-sizes`` B: the loop a user would write, prompts in input order, ``B`` at a
  time, left-padded, one ``model.generate`` per batch.

Every variant must produce the same text per prompt (checked and reported against ``bare-<first B>``).
Variants run ``--repeats`` times in a rotated order; the best time of each counts (noise on a shared
machine only slows a run down). The process's CPU seconds are reported beside the wall time (other work on
the machine stretches wall time far more than CPU time), and so is the 1-minute load average.

Two sources of varied output lengths:

- ``--model DIR``: a real instruct model (e.g. SmolLM2-135M-Instruct, see FIELD_NOTES) on built-in chat
  prompts (short answers, lists, code): the outputs end at EOS, or at ``--max-tokens`` (256).
- no ``--model``: a random-weight Llama from ``testing/tiny_model.py`` (``--hidden-size``, ``--layers``) whose
  rows get their own ``max_tokens``, drawn log-uniformly from 1 to ``--max-tokens`` (``ignore_eos``); the
  engine takes them as per-prompt sampling parameters, and the bare loop runs each batch to its largest
  budget and cuts every row at its own, which is what EOS does to a static batch.

    python benchmarks/hf_continuous_batching.py [--model DIR] [--prompts 64] [--max-tokens 256] \
        [--batch-sizes 8,16,32] [--repeats 1] [--hidden-size 512] [--layers 4] [--model-dir DIR]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_infer_dagster.engines.hf import HFEngine
from llm_infer_dagster.testing.tiny_model import build_tiny_model, corpus

#: Chat prompts for a real instruct model: answers from one word to long code.
QUESTIONS = [
    "What is the capital of France?",
    "Answer with one word: is water wet?",
    "What is 12 times 7?",
    "Name a primary color.",
    "Say hello.",
    "What does CPU stand for?",
    "Is 17 a prime number? Answer yes or no.",
    "What is the largest planet in our solar system?",
    "Translate 'thank you' into Spanish.",
    "Give a synonym for 'happy'.",
    "Who wrote 'Romeo and Juliet'?",
    "What is the boiling point of water in Celsius?",
    "List three fruits.",
    "Write a haiku about autumn.",
    "Explain what a variable is in programming in one sentence.",
    "Give me two tips for better sleep.",
    "Describe the color blue to someone who cannot see.",
    "Summarize the plot of Cinderella in two sentences.",
    "Why is the sky blue? Explain briefly.",
    "What are the three states of matter?",
    "Write a short motivational quote.",
    "Explain recursion to a child.",
    "What is the difference between a list and a tuple in Python?",
    "Explain what an API is.",
    "Write a Python function that reverses a string.",
    "Write a Python function that checks whether a number is prime.",
    "Write a JavaScript function that returns the largest number in an array.",
    "Write a SQL query that counts the rows of a table named orders, grouped by customer_id.",
    "Write a bash script that prints the numbers from 1 to 10.",
    "Write a Python class for a bank account with deposit and withdraw methods.",
    "Write a Python function that computes the Fibonacci numbers up to n.",
    "Write a C function that swaps two integers through pointers.",
    "Write a Python script that reads a CSV file and prints the sum of its second column.",
    "Implement binary search in Python with comments.",
    "Write a Python function that merges two sorted lists into one sorted list.",
    "Write an HTML page with a title and a button that shows an alert when clicked.",
    "Write a short story about a robot who learns to paint.",
    "Explain how a hash table works, with an example.",
    "Write a Python function that counts the words in a text and returns the ten most common.",
    "Write a Rust function that returns the sum of a vector of integers.",
    "Give a step-by-step recipe for pancakes.",
    "Write a letter to a friend about your summer holiday.",
    "Compare cats and dogs as pets.",
    "Explain the water cycle.",
    "Write a Python function that validates an email address with a regular expression.",
    "Write a Go program that prints 'Hello, world'.",
    "What is 2 + 2?",
    "Name the four seasons.",
]


def chat_prompts(count: int) -> list[Any]:
    return [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(count)]


def random_prompts(count: int) -> list[str]:
    lines = corpus()
    return [f"{lines[(i * 13) % len(lines)]} {lines[(i * 7) % len(lines)]}\nAnswer:" for i in range(count)]


def drawn_budgets(count: int, max_tokens: int, seed: int = 21) -> list[int]:
    """Log-uniform in [1, max_tokens]: many short outputs, some long, as real outputs run."""
    rng = random.Random(seed)
    return [max(1, min(max_tokens, round(math.exp(rng.uniform(0, math.log(max_tokens)))))) for _ in range(count)]


class BareLoop:
    """The static loop a user writes: ``B`` prompts at a time through ``model.generate``, in input order."""

    def __init__(self, model_path: str, eos: list[int] | None) -> None:
        self.tok = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True, dtype=torch.float32).eval()
        self.eos = eos  # None: run every row to its budget

    def encode(self, prompt: Any) -> tuple[str, bool]:
        if isinstance(prompt, str):
            return prompt, True
        text = self.tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return str(text), False

    def run(self, prompts: list[Any], budgets: list[int], batch_size: int) -> tuple[list[str], int]:
        texts, new_tokens = [], 0
        for start in range(0, len(prompts), batch_size):
            encoded = [self.encode(p) for p in prompts[start : start + batch_size]]
            add_special = encoded[0][1]
            inputs = self.tok(
                [t for t, _ in encoded], return_tensors="pt", padding=True, add_special_tokens=add_special
            )
            limits = budgets[start : start + batch_size]
            with torch.inference_mode():
                out = self.model.generate(
                    **inputs,
                    max_new_tokens=max(limits),
                    do_sample=False,
                    eos_token_id=self.eos,
                    pad_token_id=self.tok.pad_token_id,
                )
            for row, limit in zip(out[:, inputs["input_ids"].shape[1] :].tolist(), limits, strict=True):
                row = row[:limit]
                end = next((k for k, t in enumerate(row) if self.eos and t in self.eos), None)
                new_tokens += len(row) if end is None else end + 1
                texts.append(self.tok.decode(row if end is None else row[:end], skip_special_tokens=True))
        return texts, new_tokens


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall seconds, this process's CPU seconds (all threads), and ``fn``'s result."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - start, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local HF model folder (a real instruct model); default: random model")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "llm-infer-bench-models")
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]

    if args.model:
        model_path, real = args.model, True
        prompts: list[Any] = chat_prompts(args.prompts)
        budgets = [args.max_tokens] * len(prompts)
        sampling: Any = {"temperature": 0, "max_tokens": args.max_tokens}
    else:
        model_path, real = (
            str(
                build_tiny_model(
                    args.model_dir / f"llama-h{args.hidden_size}-l{args.layers}",
                    hidden_size=args.hidden_size,
                    num_layers=args.layers,
                    num_heads=max(2, args.hidden_size // 64),
                )
            ),
            False,
        )
        prompts = random_prompts(args.prompts)
        budgets = drawn_budgets(len(prompts), args.max_tokens)
        sampling = [{"temperature": 0, "max_tokens": b, "ignore_eos": True} for b in budgets]

    engine = HFEngine(model_path, dtype="float32")  # the defaults otherwise: batch_size 32
    bare = BareLoop(model_path, engine._eos_ids if real else None)
    warm = prompts[:4]
    engine.generate(warm, sampling if isinstance(sampling, dict) else sampling[:4])
    bare.run(warm, [8] * 4, 4)

    per_row: list[int] = []

    def run_engine() -> tuple[list[str], int]:
        done = engine.generate(prompts, sampling)
        assert all(c.error is None for c in done), [c.error for c in done if c.error]
        per_row[:] = [c.completion_tokens for c in done]
        return [c.response or "" for c in done], sum(per_row)

    variants: dict[str, Callable[[], tuple[list[str], int]]] = {f"engine (batch_size {engine.batch_size})": run_engine}
    for b in sizes:
        variants[f"bare-{b}"] = lambda b=b: bare.run(prompts, budgets, b)
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu_times: dict[str, list[float]] = {n: [] for n in names}
    outputs: dict[str, tuple[list[str], int]] = {}
    load_before = os.getloadavg()[0]
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds, cpu, outputs[name] = timed(variants[name])
            times[name].append(seconds)
            cpu_times[name].append(cpu)
            print(f"# repeat {r}: {name} {seconds:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    load_after = os.getloadavg()[0]

    reference = outputs[f"bare-{sizes[0]}"][0]
    rows = []
    for name in names:
        texts, tokens = outputs[name]
        best = min(times[name])
        same = sum(a == b for a, b in zip(texts, reference, strict=True))
        rows.append(
            {
                "variant": name,
                "best_s": round(best, 2),
                "all_s": [round(t, 2) for t in times[name]],
                "best_cpu_s": round(min(cpu_times[name]), 2),
                "new_tokens": tokens,
                "new_tokens_per_s": round(tokens / best, 1),
                "identical_to_reference": f"{same}/{len(prompts)}",
            }
        )
    engine_best = rows[0]["best_s"]
    best_bare = min(rows[1:], key=lambda row: row["best_s"])
    lengths = sorted(per_row)  # new tokens per prompt, the terminating token included
    result = {
        "benchmark": "hf_continuous_batching",
        "model": model_path if real else {"random_llama": True, "hidden_size": args.hidden_size, "layers": args.layers},
        "prompts": len(prompts),
        "max_tokens": args.max_tokens,
        "output_tokens_min_median_max": [lengths[0], lengths[len(lengths) // 2], lengths[-1]],
        "reference": f"bare-{sizes[0]}",
        "variants": rows,
        "engine_vs_best_bare": f"{best_bare['variant']}: {best_bare['best_s'] / engine_best:.2f}x",
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m": [round(load_before, 2), round(load_after, 2)],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    engine.close()
    print(json.dumps(result))
    print()
    print(f"{'variant':26}{'best s':>9}{'CPU s':>9}{'new tok':>9}{'tok/s':>9}  identical")
    for row in rows:
        print(
            f"{row['variant']:26}{row['best_s']:>9.2f}{row['best_cpu_s']:>9.2f}{row['new_tokens']:>9}"
            f"{row['new_tokens_per_s']:>9.1f}  {row['identical_to_reference']}"
        )
    print(f"engine vs the best bare batch size ({result['engine_vs_best_bare']})")


if __name__ == "__main__":
    main()
