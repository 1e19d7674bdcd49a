"""The seed-layout records built from a shard's frames: no Dagster, no engine."""

from __future__ import annotations

import json

import polars as pl

from llm_infer_dagster.shards.exports import seed_records, strict_json_text
from llm_infer_dagster.shards.tables import ANSWER_SCHEMA, COMPLETION_SCHEMA, PROMPT_SCHEMA, RAW_SCHEMA

CODE = "    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"


def frames() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    ids = ["f:0", "f:1", "f:2"]
    raw = pl.DataFrame(
        {"record_id": ids, "file": ["f.jsonl"] * 3, "index": [0, 1, 2], "data": ['{"q": 1}', '{"q": 2}', '{"q": 3}']},
        schema=RAW_SCHEMA,
    )
    prompts = pl.DataFrame(
        {
            "record_id": ids,
            "prompt": ["def fib(n):\n", " Say hi ", "x" * 9],
            "is_chat": [False] * 3,
            "error": [None] * 3,
        },
        schema=PROMPT_SCHEMA,
    )
    completions = pl.DataFrame(
        {
            "record_id": ids,
            "response": [CODE, "  Hi!\n\n", None],
            "responses": [[CODE], ["  Hi!\n\n"], []],
            "finish_reason": ["stop", "stop", None],
            "finish_reasons": [["stop"], ["stop"], []],
            "prompt_tokens": [4, 3, 9],
            "completion_tokens": [20, 4, 0],
            "error": [None, None, "prompt is 9 tokens; the model accepts at most 8"],
            "model": ["m"] * 3,
            "sampling_params": ["{}"] * 3,
        },
        schema=COMPLETION_SCHEMA,
    )
    return raw, prompts, completions


def test_model_response_stays_stripped_and_the_exact_text_rides_along() -> None:
    raw, prompts, completions = frames()
    answers = pl.DataFrame(
        {"record_id": ["f:0", "f:1", "f:2"], "answer": ['"fib"', None, None], "error": [None, None, "no completion"]},
        schema=ANSWER_SCHEMA,
    )
    for with_answers in (None, answers):  # results/infer, then results/extract
        records = json.loads(strict_json_text(seed_records(raw, prompts, completions, with_answers)))
        assert [r["model_response"] for r in records] == [CODE.strip(), "Hi!", ""]  # as the seed stripped it
        assert [r["model_response_raw"] for r in records] == [CODE, "  Hi!\n\n", ""]  # exactly as generated
        assert records[0]["model_response_raw"].startswith("    if n < 2:")  # the code's indentation survives
        assert ("extracted_answer" in records[0]) == (with_answers is not None)
