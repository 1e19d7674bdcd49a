"""vLLM CPU throughput with structured outputs (a JSON schema) vs without, on the same prompts, in one run.

One ``VLLMEngine`` (the platform's engine: its add-request/step loop, as the workers run it) on a random-weight
Llama built with ``llm_infer_dagster.testing.tiny_model`` (no hub); then, in rotated order each repeat, the
same prompts through:

  plain        the task's sampling parameters alone
  json         the same plus ``structured_outputs: {"json": SCHEMA, "disable_any_whitespace": true}``
  json-ws      the same JSON schema with vLLM's default whitespace (the model may fill it until max_tokens)

Each variant reports generated tokens/s and rows/s (median over repeats) and the share of completions that
satisfy the schema; "kept" is the variant's tokens/s over plain's. Sampling is temperature 1 (random weights
under greedy decoding repeat themselves), unseeded, ``max_tokens`` the same for every variant; start-up is not
timed. Output lengths differ by variant (the JSON stops once the object closes), which is why tokens/s, not
rows/s, is the throughput compared. vLLM starts its engine core with spawn: everything runs under
``if __name__ == "__main__":``.

    python benchmarks/structured_outputs.py [--prompts 256] [--max-tokens 128] [--repeats 3]
        [--hidden-size 256] [--layers 4] [--vocab-size 2048] [--model-dir .models/bench-structured]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["yes", "no", "paris", "berlin", "seven", "unknown"]},
        "reason": {"type": "string", "pattern": "^[a-z ]{1,24}$"},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        "tags": {"type": "array", "items": {"enum": ["math", "geo", "chat", "other"]}, "maxItems": 3},
    },
    "required": ["answer", "reason", "confidence", "tags"],
    "additionalProperties": False,
}

WORDS = ["the", "a", "capital", "city", "river", "number", "answer", "question", "model", "data", "what", "which"]


def prompts(n: int) -> list[str]:
    return [" ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(8 + i % 24)) + "?" for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--model-dir", default=".models/bench-structured")
    args = ap.parse_args()

    from llm_infer_dagster.engines.vllm import VLLMEngine
    from llm_infer_dagster.tasks.structured import matches
    from llm_infer_dagster.testing.tiny_model import build_tiny_model

    model = build_tiny_model(
        Path(args.model_dir), hidden_size=args.hidden_size, num_layers=args.layers,
        num_heads=args.hidden_size // 64, vocab_size=args.vocab_size, max_position_embeddings=512,
    )  # fmt: skip
    t0 = time.perf_counter()
    engine = VLLMEngine(str(model), device="cpu", max_model_len=512, engine_args={"enforce_eager": True})
    start_s = time.perf_counter() - t0
    base: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0, "max_tokens": args.max_tokens}
    variants: dict[str, dict[str, Any]] = {
        "plain": base,
        "json": {**base, "structured_outputs": {"json": SCHEMA, "disable_any_whitespace": True}},
        "json-ws": {**base, "structured_outputs": {"json": SCHEMA}},
    }
    batch = prompts(args.prompts)
    engine.generate(batch[:8], variants["json"])  # warm-up: first compile of the schema, first steps
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            out = engine.generate(batch, variants[name])
            seconds = time.perf_counter() - t
            tokens = sum(c.completion_tokens for c in out)
            spec = variants[name].get("structured_outputs")
            ok = sum(matches(spec, c.response) for c in out) if spec else -len(out)  # < 0: nothing to match
            cut = sum(c.finish_reasons[:1] == ["length"] for c in out)
            runs[name].append({"seconds": seconds, "tokens": tokens, "matched": ok / len(out), "cut": cut / len(out)})
    engine.close()

    summary: dict[str, dict[str, float]] = {}
    for name, rs in runs.items():
        summary[name] = {
            "tokens_per_s": statistics.median(x["tokens"] / x["seconds"] for x in rs),
            "rows_per_s": statistics.median(args.prompts / x["seconds"] for x in rs),
            "tokens_per_row": statistics.median(x["tokens"] for x in rs) / args.prompts,
            "matched": min(x["matched"] for x in rs),
            "cut_at_max_tokens": max(x["cut"] for x in rs),
        }
    plain = summary["plain"]["tokens_per_s"]
    print(json.dumps({"args": vars(args), "engine_start_s": round(start_s, 1), "cpus": os.cpu_count(),
                      "machine": platform.platform(), "summary": summary}))  # fmt: skip
    print("\n| variant | tokens/s | rows/s | tokens/row | cut at max_tokens | matching the schema | tokens/s kept |")
    print("|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        matched = f"{s['matched']:.0%}" if s["matched"] >= 0 else "-"
        print(f"| {name} | {s['tokens_per_s']:.0f} | {s['rows_per_s']:.1f} | {s['tokens_per_row']:.1f} | "
              f"{s['cut_at_max_tokens']:.0%} | {matched} | {s['tokens_per_s'] / plain:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
