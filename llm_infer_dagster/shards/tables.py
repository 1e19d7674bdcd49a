"""The one home of a shard's tables: the four asset names and the Parquet schema of each.

``<task>/<asset>/<shard>.parquet`` holds one of these frames (see ``shards/store.py``); the transforms in
``shards/transforms.py`` and ``runtime/completions.py`` build them with exactly these columns.
"""

from __future__ import annotations

from typing import Literal, get_args

import polars as pl
from polars.datatypes import DataType, DataTypeClass

#: A task's assets, in the order a shard goes through them.
AssetName = Literal["raw", "prompts", "completions", "answers"]
ASSETS: tuple[AssetName, ...] = get_args(AssetName)

Schema = dict[str, DataType | DataTypeClass]

#: ``raw``: one row per input row, ``data`` the row as JSON; ``record_id`` is ``<file id>:<row index>``.
RAW_SCHEMA: Schema = {"record_id": pl.String, "file": pl.String, "index": pl.Int64, "data": pl.String}

#: ``prompts``: the text to send, or chat messages as JSON (``is_chat``); ``error`` when format_prompt failed.
PROMPT_SCHEMA: Schema = {"record_id": pl.String, "prompt": pl.String, "is_chat": pl.Boolean, "error": pl.String}

#: ``prompts`` of a shard where some row's format_prompt returned its own ``sampling_params`` (JSON of just
#: the keys it overrides, null for the other rows); a shard without any keeps :data:`PROMPT_SCHEMA`.
ROW_SAMPLING_COLUMN = "sampling_params"
PROMPT_ROW_SAMPLING_SCHEMA: Schema = {**PROMPT_SCHEMA, ROW_SAMPLING_COLUMN: pl.String}

#: ``completions``: the engine's samples of each prompt (``response`` is the first), with token counts;
#: ``sampling_params`` is the row's effective parameters (the task's, under the row's own overrides), as JSON.
COMPLETION_SCHEMA: Schema = {
    "record_id": pl.String,
    "response": pl.String,
    "responses": pl.List(pl.String),
    "finish_reason": pl.String,
    "finish_reasons": pl.List(pl.String),
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "error": pl.String,
    "model": pl.String,
    "sampling_params": pl.String,
}

#: ``completions`` of a pooling task (task_settings' ``"task"``) add its value's columns to COMPLETION_SCHEMA (whose
#: text columns stay empty): ``embed`` a fixed-size ``embedding`` (``pl.Array(pl.Float32, dim)``: its size is the
#: model's), ``classify`` the top ``label``, the head's ``labels`` and their ``probs`` (same order), ``reward`` one
#: float. ``shards/pooled.py`` reads them back.
POOLED_SCHEMAS: dict[str, Schema] = {
    "embed": {"embedding": pl.List(pl.Float32)},  # cast to pl.Array(pl.Float32, dim) once dim is known
    "classify": {"label": pl.String, "labels": pl.List(pl.String), "probs": pl.List(pl.Float32)},
    "reward": {"reward": pl.Float64},
}

#: ``answers``: extract_answer's value as JSON (null when it returned None), ``error`` when there is none.
ANSWER_SCHEMA: Schema = {"record_id": pl.String, "answer": pl.String, "error": pl.String}

#: ``answers`` of a task with a ``score(answer, org_data)``: also ``score`` (null where the row has no answer,
#: the scorer returned None or failed). A task without a scorer keeps ANSWER_SCHEMA: the seed's tables as they were.
SCORED_ANSWER_SCHEMA: Schema = {**ANSWER_SCHEMA, "score": pl.Float64}

#: ``answers`` of a scored task sampled ``n > 1`` times (some row's ``sampling_params`` has ``"n"`` above 1):
#: ``answer`` and ``score`` stay the first sample's; ``n_samples`` is the row's samples (0 without a completion),
#: ``n_correct`` those scoring at least 1.0 (null where the row has no score: no completion, or the scorer
#: returned None), ``majority_answer`` the majority vote of the samples' answers and ``majority_score`` its
#: score. ``shards/metrics.py`` turns them into pass@k and maj@n.
SAMPLED_ANSWER_SCHEMA: Schema = {
    **SCORED_ANSWER_SCHEMA,
    "n_samples": pl.Int64,
    "n_correct": pl.Int64,
    "majority_answer": pl.String,
    "majority_score": pl.Float64,
}
SAMPLED_COLUMNS: tuple[str, ...] = tuple(c for c in SAMPLED_ANSWER_SCHEMA if c not in SCORED_ANSWER_SCHEMA)

#: asset name -> the schema of its frames
SCHEMAS: dict[AssetName, Schema] = {
    "raw": RAW_SCHEMA,
    "prompts": PROMPT_SCHEMA,
    "completions": COMPLETION_SCHEMA,
    "answers": ANSWER_SCHEMA,
}
