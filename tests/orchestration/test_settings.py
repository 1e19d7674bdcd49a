"""Run settings: the one resource a run configures, its LLM_INFER_* defaults, and what the executor reads."""

from __future__ import annotations

import pytest

from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.orchestration.dagster_internals.gpu_executor import GPU_TAG, gpus_needed
from llm_infer_dagster.orchestration.settings import RunSettings


def test_from_env_fills_defaults_and_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_INFER_MODEL_ARGS", '{"enforce_eager": true}')
    monkeypatch.setenv("LLM_INFER_TENSOR_PARALLEL_SIZE", "2")
    monkeypatch.setenv("LLM_INFER_USE_CPU", "yes")
    monkeypatch.setenv("LLM_INFER_MODEL_PATH", "/not/a/run/setting")  # a deployment variable: ignored here
    s = RunSettings.from_env(workers=3)
    assert s.engine_args == {"enforce_eager": True}
    assert (s.workers, s.tensor_parallel_size, s.use_cpu, s.batch_size) == (3, 2, True, 32)
    assert not hasattr(s, "model_path")


def test_bad_values_name_their_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_INFER_WORKERS", "two")
    with pytest.raises(SettingsError, match="LLM_INFER_WORKERS='two'"):
        RunSettings.from_env()
    monkeypatch.setenv("LLM_INFER_WORKERS", "0")
    with pytest.raises(SettingsError, match="LLM_INFER_WORKERS=.*greater than or equal to 1"):
        RunSettings.from_env()


def test_run_settings_hold_only_what_decides_speed() -> None:
    """What a shard holds (model, dtype, context length, limit, task files) is no run setting: no guard needed."""
    assert set(RunSettings.model_fields) == {
        "workers", "tensor_parallel_size", "use_cpu", "batch_size", "model_args", "timeout", "save_text",
        "ray_address",
    }  # fmt: skip
    for name, field in RunSettings.model_fields.items():
        assert field.description, f"{name} shows in the Launchpad without a description"


def test_the_executor_reads_the_run_config_through_the_same_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_INFER_WORKERS", "2")
    tags = {GPU_TAG: "settings"}
    assert gpus_needed(tags, {}) == 2  # the environment's default
    config = {"resources": {"settings": {"config": {"workers": 3, "tensor_parallel_size": 2}}}}
    assert gpus_needed(tags, config) == 6
    assert gpus_needed(tags, {"resources": {"settings": {"config": {"use_cpu": True}}}}) == 0
    assert gpus_needed({GPU_TAG: "1"}, config) == 1


def test_a_bad_ray_address_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_INFER_RAY_ADDRESS", "not an address")
    with pytest.raises(SettingsError, match="LLM_INFER_RAY_ADDRESS='not an address'.*not a Ray address"):
        RunSettings.from_env()
    monkeypatch.setenv("LLM_INFER_RAY_ADDRESS", "ray://head:10001")
    settings = RunSettings.from_env(workers=4, tensor_parallel_size=2)
    assert settings.ray_address == "ray://head:10001" and settings.gpus_per_run == 0  # Ray places the GPUs
