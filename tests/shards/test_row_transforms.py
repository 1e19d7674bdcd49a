"""Rows with their own sampling parameters through the pure transforms: the prompts' sampling_params column
(only where some row has one), a shard failure naming the row for invalid ones, and the share of structured
completions that match."""

from __future__ import annotations

import json

import polars as pl
import pytest

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.shards.quality import structured_outputs_matched
from llm_infer_dagster.shards.sharding import Shard
from llm_infer_dagster.shards.tables import COMPLETION_SCHEMA, PROMPT_ROW_SAMPLING_SCHEMA, PROMPT_SCHEMA
from llm_infer_dagster.shards.transforms import prompts_frame, raw_frame
from llm_infer_dagster.tasks.loader import RowPrompt, RowSamplingError


def raw(n: int = 3) -> pl.DataFrame:
    shard = Shard(key="f-0123456789-00000", file="/d/f.jsonl", file_id="abc", chunk=0, start=0, stop=n)
    return raw_frame(shard, [{"q": f"q{i}"} for i in range(n)])


def test_dicts_without_overrides_make_the_same_prompts_as_strings() -> None:
    plain = prompts_frame(raw(), lambda r: f"Q: {r['q']}")
    dicts = prompts_frame(raw(), lambda r: RowPrompt(f"Q: {r['q']}"))
    assert dicts.schema == pl.Schema(PROMPT_SCHEMA) and dicts.equals(plain)


def test_a_rows_overrides_go_to_its_own_column() -> None:
    df = prompts_frame(raw(), lambda r: RowPrompt(r["q"], {"max_tokens": 3}) if r["q"] == "q1" else r["q"])
    assert df.schema == pl.Schema(PROMPT_ROW_SAMPLING_SCHEMA)
    assert df["sampling_params"].to_list() == [None, '{"max_tokens": 3}', None]
    assert df["prompt"].to_list() == ["q0", "q1", "q2"]


def test_invalid_overrides_fail_the_shard_naming_the_row() -> None:
    def fmt(r: dict) -> object:
        if r["q"] == "q2":
            raise RowSamplingError('/t/task_config.py: format_prompt returned "sampling_params": "max_tokens" bad')
        return r["q"]

    with pytest.raises(TaskConfigError) as info:
        prompts_frame(raw(), fmt)
    assert str(info.value).startswith('/t/task_config.py: format_prompt returned "sampling_params"')
    assert "(row 2 of /d/f.jsonl)" in str(info.value)


def completions(rows: list[tuple[list[str], dict | None, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "record_id": [str(i) for i in range(len(rows))],
            "response": [r[0][0] if r[0] else None for r in rows],
            "responses": [r[0] for r in rows],
            "finish_reason": ["stop"] * len(rows),
            "finish_reasons": [["stop"] * len(r[0]) for r in rows],
            "prompt_tokens": [1] * len(rows),
            "completion_tokens": [1] * len(rows),
            "error": [r[2] for r in rows],
            "model": ["m"] * len(rows),
            "sampling_params": [json.dumps({"max_tokens": 4, **({"structured_outputs": r[1]} if r[1] else {})})
                                for r in rows],
        },
        schema=COMPLETION_SCHEMA,
    )  # fmt: skip


def test_structured_outputs_matched_counts_rows_whose_every_sample_matches() -> None:
    choice = {"choice": ["a", "b"]}
    df = completions(
        [
            (["a"], choice, None),
            (["a", "c"], choice, None),  # one sample does not match
            (["{}"], {"json": {"type": "object"}}, None),
            (["x"], None, None),  # unconstrained: not counted
            ([], choice, "prompt: too long"),  # no completion: not counted
        ]
    )
    assert structured_outputs_matched(df) == (2, 3)
    assert structured_outputs_matched(completions([(["x"], None, None)])) == (0, 0)
