"""Each table's frames have exactly the schema ``shards/tables.py`` gives it: the same columns, order and types."""

from __future__ import annotations

from typing import get_args

import polars as pl
import pytest

from llm_infer_dagster.engines.base import Completion
from llm_infer_dagster.runtime.completions import completions_frame, prepare_shard
from llm_infer_dagster.shards.sharding import Shard
from llm_infer_dagster.shards.tables import (
    ANSWER_SCHEMA,
    ASSETS,
    COMPLETION_SCHEMA,
    PROMPT_SCHEMA,
    RAW_SCHEMA,
    SCHEMAS,
    AssetName,
)
from llm_infer_dagster.shards.transforms import answers_frame, prompts_frame, raw_frame

SHARD = Shard(key="a_jsonl-0123abcd-00000", file="/d/a.jsonl", file_id="a_jsonl-0123abcd", chunk=0, start=0, stop=3)


def frames(rows: list[dict[str, object]]) -> dict[str, pl.DataFrame]:
    """One shard through every transform: a row with a prompt error, a chat prompt, a plain one."""
    raw = raw_frame(SHARD, rows)
    prompts = prompts_frame(raw, lambda r: [{"role": "user", "content": r["q"]}] if r.get("chat") else r["q"])
    request = prepare_shard(prompts)
    sent = [Completion(responses=["answer 4"], finish_reasons=["stop"], prompt_tokens=3) for _ in request.to_send]
    completions = completions_frame(request, sent, {"n": 1}, "tiny")
    answers = answers_frame(completions, lambda text: int(text.split()[-1]))
    return {"raw": raw, "prompts": prompts, "completions": completions, "answers": answers}


@pytest.mark.parametrize(
    "rows", [[{"q": "plain"}, {"nope": 1}, {"q": "chat", "chat": True}], []], ids=["three_rows", "empty"]
)
def test_each_transform_returns_exactly_its_schema(rows: list[dict[str, object]]) -> None:
    out = frames(rows)
    assert out["raw"].schema == pl.Schema(RAW_SCHEMA)
    assert out["prompts"].schema == pl.Schema(PROMPT_SCHEMA)
    assert out["completions"].schema == pl.Schema(COMPLETION_SCHEMA)
    assert out["answers"].schema == pl.Schema(ANSWER_SCHEMA)
    assert {a: f.height for a, f in out.items()} == dict.fromkeys(ASSETS, len(rows))


def test_every_asset_has_one_schema_and_the_names_are_the_literal_type() -> None:
    assert ASSETS == get_args(AssetName) == ("raw", "prompts", "completions", "answers")
    assert tuple(SCHEMAS) == ASSETS
