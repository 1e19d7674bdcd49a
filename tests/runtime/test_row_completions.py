"""A prompts shard whose rows carry their own sampling parameters: what goes to the engine and what is stored
with each completion (pure data shaping, plus the real HF engine on the tiny model end to end)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from llm_infer_dagster.engines.base import Completion
from llm_infer_dagster.runtime.completions import complete_shard, completions_frame, prepare_shard
from llm_infer_dagster.shards.tables import PROMPT_ROW_SAMPLING_SCHEMA, PROMPT_SCHEMA

TASK = {"temperature": 0.0, "max_tokens": 16, "structured_outputs": {"choice": ["a", "b"]}}


def prompts(overrides: list[str | None] | None) -> pl.DataFrame:
    cols = {"record_id": ["r0", "r1", "r2"], "prompt": ["p0", None, "p2"], "is_chat": [False] * 3,
            "error": [None, "boom", None]}  # fmt: skip
    if overrides is None:
        return pl.DataFrame(cols, schema=PROMPT_SCHEMA)
    return pl.DataFrame({**cols, "sampling_params": overrides}, schema=PROMPT_ROW_SAMPLING_SCHEMA)


def test_without_overrides_the_engine_gets_the_tasks_mapping_and_every_row_stores_it() -> None:
    request = prepare_shard(prompts(None))
    assert request.sampling(TASK) is TASK
    df = completions_frame(request, [Completion(["a"], ["stop"]), Completion(["b"], ["stop"])], TASK, "m")
    assert df["sampling_params"].to_list() == [json.dumps(TASK, sort_keys=True)] * 3


def test_each_sent_row_gets_the_task_under_its_own_and_stores_them() -> None:
    request = prepare_shard(prompts(['{"max_tokens": 3}', None, '{"structured_outputs": null}']))
    sent = request.sampling(TASK)
    assert sent == [{**TASK, "max_tokens": 3}, {"temperature": 0.0, "max_tokens": 16}]  # null: constraint off
    df = completions_frame(request, [Completion(["a"], ["stop"]), Completion(["x"], ["stop"])], TASK, "m")
    stored = [json.loads(s) for s in df["sampling_params"].to_list()]
    assert stored == [{**TASK, "max_tokens": 3}, TASK, {"temperature": 0.0, "max_tokens": 16}]


@pytest.mark.slow
def test_per_row_overrides_on_the_real_hf_engine(tiny_model_path: str) -> None:
    from llm_infer_dagster.engines.hf import HFEngine

    engine = HFEngine(tiny_model_path, device="cpu", max_model_len=256)
    task = {"temperature": 0.0, "max_tokens": 12}
    df = complete_shard(
        engine, prompts(['{"max_tokens": 2}', None, '{"structured_outputs": {"choice": ["yes", "no"]}}']), task, "m"
    )
    assert df["completion_tokens"][0] <= 2  # its own max_tokens
    assert df["response"][2] in ("yes", "no")  # its own constraint
    assert json.loads(df["sampling_params"][0])["max_tokens"] == 2
    assert json.loads(df["sampling_params"][2])["structured_outputs"] == {"choice": ["yes", "no"]}
    assert df["error"][1] == "prompt: boom"
