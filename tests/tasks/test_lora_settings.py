"""LoRA adapters in task_settings.json: each adapter folder is checked at load (one line naming the file and
the key), and becomes a model of its own; its files' content is part of its code version and nothing else's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.tasks.task_settings import SETTINGS_FILE, AdapterChoice, load_task_settings
from llm_infer_dagster.tasks.versions import adapter_fingerprint, task_code_versions


def fake_adapter(folder: Path, rank: int = 8, weights: bytes = b"w1") -> Path:
    """A folder shaped like peft's save_pretrained output (the checks read files only, no peft)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": rank}))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def settings_with(folder: Path, adapters: object, **model: object) -> Path:
    path = folder / SETTINGS_FILE
    entry = {"model_path": "/models/base", "model_type": "hf", **model, "lora_adapters": adapters}
    path.write_text(json.dumps({"models": {"base": entry}}))
    return path


def error_for(folder: Path, adapters: object, **model: object) -> str:
    path = settings_with(folder, adapters, **model)
    with pytest.raises(TaskConfigError) as info:
        load_task_settings(folder)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message


def test_adapters_become_models_of_their_own(tmp_path: Path) -> None:
    fake_adapter(tmp_path / "adapters" / "math")
    outside = fake_adapter(tmp_path.parent / f"{tmp_path.name}-elsewhere" / "code")
    settings_with(tmp_path, {"math": "adapters/math", "code": str(outside)}, dtype="float32")
    models = load_task_settings(tmp_path).models
    assert list(models) == ["base", "math", "code"]
    base, math, code = models["base"], models["math"], models["code"]
    assert base.adapter_path is None and not isinstance(base, AdapterChoice)
    assert base.lora_adapters == {"math": str(tmp_path / "adapters" / "math"), "code": str(outside)}
    assert isinstance(math, AdapterChoice) and math.base_model == "base"
    assert math.adapter_path == str(tmp_path / "adapters" / "math")  # relative to the task folder
    assert code.adapter_path == str(outside)
    for m in (math, code):  # the base's engine settings, no adapters of its own
        assert (m.model_path, m.model_type, m.dtype, m.lora_adapters) == ("/models/base", "hf", "float32", None)


@pytest.mark.parametrize(
    ("make", "where", "says"),
    [
        (lambda d: None, "missing", "no such folder"),
        (lambda d: (d / "missing").write_text("x"), "missing", "is not a folder"),
        (lambda d: (d / "missing").mkdir(), "missing", "has no adapter_config.json: not a PEFT adapter folder"),
        (
            lambda d: (fake_adapter(d / "missing") / "adapter_config.json").write_text("{oops"),
            "missing",
            "adapter_config.json is not valid JSON",
        ),
        (
            lambda d: (fake_adapter(d / "missing") / "adapter_config.json").write_text('{"peft_type": "IA3", "r": 8}'),
            "missing",
            'only "LORA" adapters are supported',
        ),
        (
            lambda d: (fake_adapter(d / "missing") / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 0}'),
            "missing",
            'has "r" (the LoRA rank) 0',
        ),
        (
            lambda d: (fake_adapter(d / "missing") / "adapter_model.safetensors").unlink(),
            "missing",
            "has no adapter weights (adapter_model.safetensors or adapter_model.bin)",
        ),
    ],
)
def test_a_bad_adapter_folder_is_one_line_naming_file_key_and_folder(tmp_path: Path, make, where, says) -> None:
    make(tmp_path)
    message = error_for(tmp_path, {"ad": where})
    assert '"models.base.lora_adapters.ad"' in message and str(tmp_path / where) in message and says in message


def test_adapter_names_are_model_names(tmp_path: Path) -> None:
    fake_adapter(tmp_path / "a")
    message = error_for(tmp_path, {"../x": "a"})
    assert '"models.base.lora_adapters.../x": a model name must be 1-40 letters, digits or' in message
    assert error_for(tmp_path, ["a"]).endswith('"models.base.lora_adapters" must be a JSON object, got ["a"]')
    assert "must be a string" in error_for(tmp_path, {"x": 3})
    # an adapter's name is an asset name next to the task's models: no two may share one
    path = tmp_path / SETTINGS_FILE
    base = {"model_path": "/m", "lora_adapters": {"other": "a"}}
    path.write_text(json.dumps({"models": {"base": base, "other": {"model_path": "/m"}}}))
    with pytest.raises(TaskConfigError, match=r'"models.base.lora_adapters.other": "other" is already a model'):
        load_task_settings(tmp_path)
    twice = {"model_path": "/m", "lora_adapters": {"x": "a"}}
    path.write_text(json.dumps({"models": {"b1": twice, "b2": twice}}))
    with pytest.raises(TaskConfigError, match=r'"models.b2.lora_adapters.x": "x" is already an adapter'):
        load_task_settings(tmp_path)


def test_the_expanded_fields_cannot_be_written_in_the_file(tmp_path: Path) -> None:
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"models": {"m": {"model_path": "/m", "adapter": "/x"}}}))
    with pytest.raises(TaskConfigError, match=r'unknown key\(s\) adapter in "models.m"'):
        load_task_settings(tmp_path)


def test_adapter_fingerprint_is_its_files_content(tmp_path: Path) -> None:
    folder = fake_adapter(tmp_path / "a", weights=b"one")
    first = adapter_fingerprint(str(folder))
    (folder / "README.md").write_text("peft's model card: nothing loads it")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x").write_text("hidden")
    assert adapter_fingerprint(str(folder)) == first
    (folder / "adapter_model.safetensors").write_bytes(b"two")  # same size, new weights
    second = adapter_fingerprint(str(folder))
    assert second != first
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16}))
    third = adapter_fingerprint(str(folder))
    assert third not in (first, second)
    # content, not place: the same files in another folder are the same adapter (moving it redoes nothing)
    import shutil

    assert adapter_fingerprint(str(shutil.copytree(folder, tmp_path / "moved"))) == third


def test_an_adapter_changes_completions_and_answers_versions_only(tmp_path: Path) -> None:
    import types

    module = types.ModuleType("task")
    exec("def get_file_list(p): return []\ndef read_file(p): return []\n"
         "def format_prompt(r): return 'x'\ndef extract_answer(r): return r", module.__dict__)  # fmt: skip
    folder = tmp_path / "task"
    folder.mkdir()
    adapter = fake_adapter(tmp_path / "a")

    def versions(adapter_path: str | None) -> dict[str, str]:
        return task_code_versions(module, folder, {"temperature": 0}, model_type="hf", model_path=None,
                                  adapter_path=adapter_path)  # fmt: skip

    base, with_a = versions(None), versions(str(adapter))
    assert (base["raw"], base["prompts"]) == (with_a["raw"], with_a["prompts"])
    assert base["completions"] != with_a["completions"] and base["answers"] != with_a["answers"]
    (adapter / "adapter_model.safetensors").write_bytes(b"new weights")
    again = versions(str(adapter))
    assert again["completions"] != with_a["completions"] and versions(None) == base
