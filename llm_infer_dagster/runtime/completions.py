"""Turn one prompts shard into one completions frame: what to send to the engine, and the frame built
from what came back. Pure data shaping; rows with a prompt error are carried through, never sent."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from llm_infer_dagster.engines.base import Completion, Engine, Prompt
from llm_infer_dagster.shards.tables import COMPLETION_SCHEMA


@dataclass
class ShardRequest:
    """The prompts of one shard that go to the engine, and where their answers go back."""

    prompts: pl.DataFrame
    rows: list[int]  # indices into ``prompts`` of the rows sent
    to_send: list[Prompt]


def prepare_shard(prompts: pl.DataFrame) -> ShardRequest:
    rows: list[int] = []
    to_send: list[Prompt] = []
    for i, row in enumerate(prompts.iter_rows(named=True)):
        if row["error"] is None:
            rows.append(i)
            to_send.append(json.loads(row["prompt"]) if row["is_chat"] else row["prompt"])
    return ShardRequest(prompts, rows, to_send)


def completions_frame(
    request: ShardRequest, completions: Sequence[Completion], sampling: Mapping[str, Any], model: str
) -> pl.DataFrame:
    results = [Completion(error=f"prompt: {e}") for e in request.prompts["error"].to_list()]
    for i, c in zip(request.rows, completions, strict=True):
        results[i] = c
    sampling_json = json.dumps(dict(sampling), sort_keys=True)
    return pl.DataFrame(
        {
            "record_id": request.prompts["record_id"].to_list(),
            "response": [c.response for c in results],
            "responses": [c.responses for c in results],
            "finish_reason": [c.finish_reasons[0] if c.finish_reasons else None for c in results],
            "finish_reasons": [c.finish_reasons for c in results],
            "prompt_tokens": [c.prompt_tokens for c in results],
            "completion_tokens": [c.completion_tokens for c in results],
            "error": [c.error for c in results],
            "model": [model] * len(results),
            "sampling_params": [sampling_json] * len(results),
        },
        schema=COMPLETION_SCHEMA,
    )


def complete_shard(engine: Engine, prompts: pl.DataFrame, sampling: Mapping[str, Any], model: str) -> pl.DataFrame:
    """One shard, start to finish, with a blocking ``generate`` call."""
    request = prepare_shard(prompts)
    return completions_frame(request, engine.generate(request.to_send, sampling), sampling, model)
