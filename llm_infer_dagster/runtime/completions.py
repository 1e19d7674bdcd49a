"""Turn one prompts shard into one completions frame: what to send to the engine, and the frame built
from what came back. Pure data shaping; rows with a prompt error are carried through, never sent.

A row whose ``format_prompt`` set its own sampling parameters (the prompts' ``sampling_params`` column) is
sent with the task's parameters under its own, and those effective parameters are stored with its completion.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from llm_infer_dagster.engines.base import Completion, Engine, Prompt, Sampling
from llm_infer_dagster.shards.tables import COMPLETION_SCHEMA, POOLED_SCHEMAS, ROW_SAMPLING_COLUMN


@dataclass
class ShardRequest:
    """The prompts of one shard that go to the engine, and where their answers go back."""

    prompts: pl.DataFrame
    rows: list[int]  # indices into ``prompts`` of the rows sent
    to_send: list[Prompt]
    overrides: list[dict[str, Any] | None] = field(default_factory=list)  # per prompts row; [] when none has any

    def sampling(self, task: Mapping[str, Any]) -> Sampling:
        """What the engine gets: the task's parameters, or (when a row has its own) one set per sent prompt."""
        if not any(self.overrides):
            return task
        return [effective_sampling(task, self.overrides[i]) for i in self.rows]


def effective_sampling(task: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """The task's parameters under a row's own, key by key; ``"structured_outputs": null`` turns it off."""
    merged = {**task, **(override or {})}
    if merged.get("structured_outputs", 0) is None:
        del merged["structured_outputs"]
    return merged


def prepare_shard(prompts: pl.DataFrame) -> ShardRequest:
    rows: list[int] = []
    to_send: list[Prompt] = []
    for i, row in enumerate(prompts.iter_rows(named=True)):
        if row["error"] is None:
            rows.append(i)
            to_send.append(json.loads(row["prompt"]) if row["is_chat"] else row["prompt"])
    overrides: list[dict[str, Any] | None] = []
    if ROW_SAMPLING_COLUMN in prompts.columns:
        overrides = [json.loads(v) if v is not None else None for v in prompts[ROW_SAMPLING_COLUMN].to_list()]
    return ShardRequest(prompts, rows, to_send, overrides)


def completions_frame(
    request: ShardRequest,
    completions: Sequence[Completion],
    sampling: Mapping[str, Any],
    model: str,
    task: str = "generate",
) -> pl.DataFrame:
    """The shard's completions; ``sampling`` is the task's, each row's own are applied over it.

    A pooling ``task`` (``embed``, ``classify``, ``reward``) adds its value's columns (``POOLED_SCHEMAS``).
    """
    results = [Completion(error=f"prompt: {e}") for e in request.prompts["error"].to_list()]
    for i, c in zip(request.rows, completions, strict=True):
        results[i] = c
    task_json = json.dumps(dict(sampling), sort_keys=True)
    if any(request.overrides):
        per_row = [
            json.dumps(effective_sampling(sampling, o), sort_keys=True) if o else task_json for o in request.overrides
        ]
    else:
        per_row = [task_json] * len(results)
    frame = pl.DataFrame(
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
            "sampling_params": per_row,
        },
        schema=COMPLETION_SCHEMA,
    )
    return frame if task == "generate" else frame.hstack(pooled_columns(task, results))


def pooled_columns(task: str, results: Sequence[Completion]) -> pl.DataFrame:
    """The pooled value's columns of a shard's rows (nulls for rows without one)."""
    values = [c.pooled if c.error is None else None for c in results]
    schema = POOLED_SCHEMAS[task]
    if task == "embed":
        column = pl.Series("embedding", values, dtype=schema["embedding"])
        dims = {len(v) for v in values if v is not None}
        if len(dims) == 1:  # a fixed-size column: every vector of a model has its size
            column = column.cast(pl.Array(pl.Float32, dims.pop()))
        return pl.DataFrame([column])
    if task == "classify":
        return pl.DataFrame(
            {
                "label": [max(v, key=v.get) if v else None for v in values],
                "labels": [list(v) if v else None for v in values],
                "probs": [list(v.values()) if v else None for v in values],
            },
            schema=schema,
        )
    return pl.DataFrame({"reward": [float(v) if v is not None else None for v in values]}, schema=schema)


def complete_shard(engine: Engine, prompts: pl.DataFrame, sampling: Mapping[str, Any], model: str) -> pl.DataFrame:
    """One shard, start to finish, with a blocking ``generate`` call."""
    request = prepare_shard(prompts)
    return completions_frame(request, engine.generate(request.to_send, request.sampling(sampling)), sampling, model)
