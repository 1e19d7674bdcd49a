"""One task, two models side by side: each model's completions and answers are their own assets and files,
with their own code versions and per-model metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, Definitions
from tests_support import CONFIGS, Settings, write_qa_input

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.orchestration.assets.factory import build_task_assets
from llm_infer_dagster.orchestration.registry import register_shards, registered_keys
from llm_infer_dagster.tasks.loader import load_task


@pytest.mark.slow
def test_two_models_run_side_by_side_without_overwriting(tmp_path: Path, tiny_model_path: str, monkeypatch) -> None:
    configs, data, out = tmp_path / "configs", tmp_path / "data", tmp_path / "out"
    shutil.copytree(CONFIGS / "qa_regex", configs / "qa_regex", ignore=shutil.ignore_patterns("data"))
    other = tmp_path / "other-model"
    from llm_infer_dagster.testing.tiny_model import build_tiny_model

    build_tiny_model(other, arch="qwen2", seed=1)
    (configs / "qa_regex" / "task_settings.json").write_text(
        json.dumps({"models": {"qwen": {"model_path": str(other), "model_type": "hf"}}})
    )
    write_qa_input(data, files=1, rows=4)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    s = Settings(task_configs=str(configs), input_path=str(data), output_dir=str(out),
                          model_path=tiny_model_path, model_type="hf", use_cpu=True)  # fmt: skip
    task = load_task(configs, "qa_regex")
    bundle = build_task_assets(task, s.deployment)
    keys_by_name = {"/".join(k.path) for a in bundle.assets for k in a.keys}
    assert keys_by_name == {"qa_regex/raw", "qa_regex/prompts", "qa_regex/completions", "qa_regex/answers",
                            "qa_regex/qwen/completions", "qa_regex/qwen/answers"}  # fmt: skip
    versions = {"/".join(k.path): v for a in bundle.assets for k, v in a.code_versions_by_key.items()}
    assert versions["qa_regex/completions"] != versions["qa_regex/qwen/completions"]

    with DagsterInstance.get() as instance:
        register_shards(instance, task, s.store("qa_regex"), str(data), shard_size=2)
        keys = registered_keys(instance, task)
        defs = Definitions(assets=bundle.all_assets, jobs=[bundle.job], resources={"settings": s.run})
        result = defs.resolve_job_def("qa_regex_job").execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        )
        assert result.success
        store = s.store("qa_regex")
        for model, expected_path in ((None, tiny_model_path), ("qwen", str(other))):
            comp = AssetKey(["qa_regex", "completions"] if model is None else ["qa_regex", model, "completions"])
            assert instance.get_materialized_partitions(comp) == set(keys)
            md = instance.get_latest_materialization_event(comp).asset_materialization.metadata
            assert md["model"].value == expected_path and md["model_name"].value == (model or "default")
            for k in keys:
                df = store.read_frame("completions", k, model)
                assert set(df["model"].to_list()) == {expected_path}
                assert store.read_frame("answers", k, model).height == df.height
        assert store.shard_path("completions", keys[0], "qwen") != store.shard_path("completions", keys[0])
        # The seed layout holds the run's model only.
        extract = json.loads(store.result_path("extract", keys[0]).read_text())
        assert len(extract) == 2


def test_model_settings_errors_name_the_file(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS / "qa_regex", configs / "qa_regex", ignore=shutil.ignore_patterns("data"))
    f = configs / "qa_regex" / "task_settings.json"
    for bad, msg in (({"models": {"bad name": {"model_path": "/m"}}}, "model name"),
                     ({"models": {"m": {}}}, '"model_path" is required'),
                     ({"models": {"m": {"model_path": "/m", "temperature": 1}}}, "unknown key(s) temperature"),
                     ({"shedule": {}}, "unknown key(s) shedule"),
                     ({"schedule": {"cron": "every hour"}}, "not a valid cron string")):  # fmt: skip
        f.write_text(json.dumps(bad))
        with pytest.raises(TaskConfigError, match="task_settings.json") as err:
            load_task(configs, "qa_regex")
        assert msg in str(err.value)
