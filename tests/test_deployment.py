"""The deployment: what decides what a shard holds, read once from LLM_INFER_* where definitions are built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_infer_dagster.deployment import SOURCE_TASK_CONFIGS, Deployment
from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.tasks.task_settings import ModelChoice


def test_variables_parse_and_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_INFER_LIMIT", "5")
    monkeypatch.setenv("LLM_INFER_OUTPUT", "/data/out")
    monkeypatch.setenv("LLM_INFER_MODEL_TYPE", "hf")
    monkeypatch.setenv("LLM_INFER_TRUST_REMOTE_CODE", "yes")
    d = Deployment.from_env(model_path="/m")
    assert (d.limit, d.output_dir, d.model_type, d.trust_remote_code, d.model_path) == (
        5,
        "/data/out",
        "hf",
        True,
        "/m",
    )
    assert d.task_configs == str(SOURCE_TASK_CONFIGS) and d.dtype == "auto"


@pytest.mark.parametrize(
    ("var", "value", "says"),
    [
        ("LLM_INFER_MODEL_TYPE", "tgi", "LLM_INFER_MODEL_TYPE='tgi'"),
        ("LLM_INFER_DTYPE", "fp8", "LLM_INFER_DTYPE='fp8'"),
        ("LLM_INFER_LIMIT", "ten", "LLM_INFER_LIMIT='ten'"),
        ("LLM_INFER_LIMIT", "0", "LLM_INFER_LIMIT='0'"),
        ("LLM_INFER_TRUST_REMOTE_CODE", "maybe", "LLM_INFER_TRUST_REMOTE_CODE='maybe'"),
    ],
)
def test_a_bad_variable_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, var: str, value: str, says: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as e:
        Deployment.from_env()
    assert says in str(e.value) and "\n" not in str(e.value)


def test_named_models_fall_back_to_the_default_models_engine_dtype_and_length() -> None:
    d = Deployment.from_env(model_path="/default", model_type="hf", dtype="float32", max_model_len=128)
    assert d.resolve(None) == ModelChoice(model_path="/default", model_type="hf", dtype="float32", max_model_len=128)
    named = d.resolve(ModelChoice(model_path="/qwen", dtype="bfloat16"))
    assert (named.model_path, named.model_type, named.dtype, named.max_model_len) == ("/qwen", "hf", "bfloat16", 128)


def test_nothing_reads_the_working_directory_at_import(tmp_path: Path) -> None:
    """Importing the package (and building the default deployment) from any cwd gives the same paths."""
    code = "from llm_infer_dagster.deployment import Deployment; d = Deployment.from_env(); print(d.output_dir)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INFER_") and k != "DAGSTER_HOME"}
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True
        ).stdout.strip()  # fmt: skip
        for cwd in (tmp_path, Path.home())
    }
    assert len(outs) == 1 and not outs.pop().startswith(str(tmp_path))


def test_a_stray_output_dir_variable_of_the_shell_moves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_INFER_OUTPUT", raising=False)
    monkeypatch.setenv("OUTPUT_DIR", "/stray")  # a common name in users' shells and CI systems
    assert Deployment.from_env().output_dir != "/stray"
    monkeypatch.setenv("LLM_INFER_OUTPUT", "/mine")
    assert Deployment.from_env().output_dir == "/mine"
