"""Honest statuses: a run that fails before it makes a shard marks no shard Failed, and earlier results stay."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dagster import AssetKey
from tests_support import CONFIGS, instance_at, llm_infer, write_qa_input

ASSETS = ("raw", "prompts", "completions", "answers")


def _no_template_model(tiny_model_path: str, tmp_path: Path) -> Path:
    plain = tmp_path / "no-template"
    shutil.copytree(tiny_model_path, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    cfg = plain / "tokenizer_config.json"
    cfg.write_text(json.dumps({k: v for k, v in json.loads(cfg.read_text()).items() if k != "chat_template"}))
    return plain


@pytest.mark.slow
def test_a_run_failing_its_preflight_marks_no_shard_failed(tmp_path: Path, tiny_model_path: str) -> None:
    configs, data, out = tmp_path / "configs", tmp_path / "data", tmp_path / "out"
    shutil.copytree(CONFIGS / "qa_regex", configs / "qa", ignore=shutil.ignore_patterns("data"))
    write_qa_input(data, files=1, rows=6)
    model = _no_template_model(tiny_model_path, tmp_path)
    base = ["--task_name", "qa", "--config_path", str(configs), "--input_path", str(data), "--output_path",
            str(out), "--model_path", str(model), "--model_type", "hf", "--use_cpu", "--shard_size", "2"]  # fmt: skip
    first = llm_infer(*base)
    assert first.returncode == 0 and "3/3 shards done" in first.stdout, first.stderr

    # Chat prompts now, for a model without a chat template: the step refuses before the engine is used.
    task_py = configs / "qa" / "task_config.py"
    task_py.write_text(
        task_py.read_text().replace(
            'return template.format(question=org_data["question"])',
            'return [{"role": "user", "content": template.format(question=org_data["question"])}]',
        )
    )
    failed = llm_infer(*base)
    assert failed.returncode != 0 and "has no chat template" in failed.stderr, failed.stderr

    inst = instance_at(out)
    for name in ASSETS:
        key = AssetKey(["qa", name])
        attempts = inst.event_log_storage.get_latest_asset_partition_materialization_attempts_without_materializations(
            key
        )
        assert attempts == {}, f"{name}: Dagster would show these shards Failed: {sorted(attempts)}"
        assert len(inst.get_materialized_partitions(key)) == 3, name  # the earlier results are still recorded
    assert len(list((out / "qa" / "answers").glob("*.parquet"))) == 3
