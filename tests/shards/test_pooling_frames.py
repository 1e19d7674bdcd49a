"""A pooling task's completions frame, what extract_answer gets from it, its checks, and its code version."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from llm_infer_dagster.engines.base import Completion
from llm_infer_dagster.runtime.completions import completions_frame, prepare_shard
from llm_infer_dagster.shards.pooled import pooled_metadata
from llm_infer_dagster.shards.quality import completions_checks
from llm_infer_dagster.shards.transforms import answers_frame
from llm_infer_dagster.tasks.loader import load_task
from llm_infer_dagster.tasks.task_settings import CheckSettings
from llm_infer_dagster.tasks.versions import task_code_versions

CONFIGS = Path(__file__).resolve().parents[2] / "task_configs"


def _prompts(n: int) -> pl.DataFrame:
    return pl.DataFrame({"record_id": [f"r{i}" for i in range(n)], "prompt": ["x"] * n, "is_chat": [False] * n,
                         "error": [None] * n}, schema_overrides={"error": pl.String})  # fmt: skip


def test_each_kind_has_its_columns_and_extract_answer_gets_its_value() -> None:
    request = prepare_shard(_prompts(3))
    cases = {
        "embed": [Completion(pooled=[0.6, 0.8]), Completion(pooled=[1.0, 0.0]), Completion(error="too long")],
        "classify": [
            Completion(pooled={"a": 0.9, "b": 0.1}),
            Completion(pooled={"a": 0.2, "b": 0.8}),
            Completion(error="too long"),
        ],  # fmt: skip
        "reward": [Completion(pooled=1.5), Completion(pooled=-2.0), Completion(error="too long")],
    }
    got: dict[str, list[object]] = {}
    for kind, completions in cases.items():
        frame = completions_frame(request, completions, {}, "m", kind)
        answers = answers_frame(frame, lambda v, k=kind: got.setdefault(k, []).append(v) or "ok")
        assert answers["error"].to_list()[2].startswith("no completion")
        checks = {c.name: c for c in completions_checks(frame, CheckSettings())}
        assert checks["empty_completions"].count == 0 and checks["cut_at_max_tokens"].count == 0
        assert checks["error_rows"].count == 1
        if kind == "embed":
            assert frame.schema["embedding"] == pl.Array(pl.Float32, 2)
            assert pooled_metadata(frame) == {"task": "embed", "dimension": 2}
        elif kind == "classify":
            assert frame["label"].to_list() == ["a", "b", None]
            assert pooled_metadata(frame) == {"task": "classify", "labels": "a, b", "dimension": 2}
    assert got["embed"] == [[0.6000000238418579, 0.800000011920929], [1.0, 0.0]]
    assert got["classify"][1] == {"a": 0.20000000298023224, "b": 0.800000011920929}
    assert got["reward"] == [1.5, -2.0]


def test_the_task_kind_is_part_of_the_completions_version_only() -> None:
    task = load_task(CONFIGS, "embed_example")
    common = {"model_type": "hf", "model_path": None}
    embed = task_code_versions(task.module, task.folder, {}, task="embed", **common)
    generate = task_code_versions(task.module, task.folder, {}, **common)
    assert embed["prompts"] == generate["prompts"] and embed["raw"] == generate["raw"]
    assert embed["completions"] != generate["completions"] and embed["answers"] != generate["answers"]
    assert (
        task_code_versions(task.module, task.folder, {}, task="classify", **common)["completions"]
        != embed["completions"]
    )
    assert task.settings.task == "embed"
