"""The recorded deployment (``<output>/llm-infer.yaml``): written once, read back whole, refused when foreign."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_infer_dagster.deployment import (
    RECORD_FILE,
    Deployment,
    check_agrees,
    claim_output,
    differences,
    output_of_instance,
    read_record,
    write_record,
)
from llm_infer_dagster.errors import SettingsError


def _deployment(out: Path, **kw: object) -> Deployment:
    fields: dict[str, object] = {
        "task_configs": "/tasks", "tasks": "qa", "output_dir": str(out), "model_path": "/m", "model_type": "hf",
        "source": "llm-infer",
    }  # fmt: skip
    return Deployment(**{**fields, **kw})


def test_a_record_reads_back_the_same_deployment_wherever_it_is_read(tmp_path: Path, monkeypatch) -> None:
    d = _deployment(tmp_path / "out", limit=3, run_defaults={"use_cpu": True}, tasks="qa,chat")
    for var in ("LLM_INFER_MODEL_PATH", "LLM_INFER_LIMIT", "LLM_INFER_DTYPE"):  # no variable changes a record
        monkeypatch.setenv(var, "float16" if var.endswith("DTYPE") else "7" if var.endswith("LIMIT") else "/other")
    path = write_record(d)
    assert path == tmp_path / "out" / RECORD_FILE
    assert read_record(tmp_path / "out") == d
    assert "tasks:\n  - qa\n  - chat" in path.read_text() or "tasks:\n- qa\n- chat" in path.read_text()
    moved = tmp_path / "moved"
    (tmp_path / "out").rename(moved)
    assert read_record(moved) == d.model_copy(update={"output_dir": str(moved)})  # a moved folder still loads


def test_load_reads_the_record_named_by_the_output_or_by_the_instance_and_nothing_else(
    tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "out"
    d = _deployment(out, tasks="qa,chat")
    write_record(d)
    for var in ("LLM_INFER_OUTPUT", "LLM_INFER_TASKS", "LLM_INFER_STATE_DIR", "DAGSTER_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LLM_INFER_MODEL_PATH", "/not-this-one")
    assert Deployment.load().model_path == "/not-this-one"  # no record named: the variables
    monkeypatch.setenv("LLM_INFER_OUTPUT", str(out))
    assert Deployment.load() == d
    monkeypatch.setenv("LLM_INFER_TASKS", "chat")  # a step process narrows it to the task it runs
    assert Deployment.load().only_tasks == ["chat"]
    monkeypatch.delenv("LLM_INFER_OUTPUT")
    monkeypatch.delenv("LLM_INFER_TASKS")
    monkeypatch.setenv("DAGSTER_HOME", str(out / ".dagster"))
    assert output_of_instance(str(out / ".dagster")) == str(out)
    assert Deployment.load() == d


def test_a_record_of_another_schema_or_with_a_bad_field_is_one_line_and_is_left_as_it_is(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = write_record(_deployment(out))
    original = path.read_text()
    cases = [
        (original.replace("schema: 1", "schema: 2"), "written with record schema 2"),
        (original.replace("model_type: hf", "model_type: tgi"), "deployment.model_type='tgi'"),
        (original.replace("deployment:\n", "deployment:\n  model_name: x\n"), "unknown key 'model_name'"),
        (original.replace("schema: 1", "schema: [1"), "not valid YAML"),
    ]
    for text, says in cases:
        assert text != original
        path.write_text(text)
        with pytest.raises(SettingsError) as e:
            read_record(out)
        assert says in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value), str(e.value)
        assert path.read_text() == text  # nothing rewritten


def test_a_disagreement_names_both_and_what_changed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_record(_deployment(out))
    other = _deployment(out, model_type="vllm", source="/proj/defs/qa/defs.yaml")
    assert differences(read_record(out), other) == ["model_type 'hf' -> 'vllm'"]
    with pytest.raises(SettingsError) as e:
        check_agrees(other, change_with="edit it")
    msg = str(e.value)
    assert str(out / RECORD_FILE) in msg and "/proj/defs/qa/defs.yaml" in msg and "'hf' -> 'vllm'" in msg
    assert check_agrees(_deployment(out, tasks="chat", shard_size=64), change_with="") is not None  # same identity


def test_a_declared_deployment_records_itself_on_its_first_shard_and_adds_its_task(tmp_path: Path) -> None:
    out = tmp_path / "out"
    claim_output(_deployment(out, source=None), "qa")  # from variables: never recorded
    assert read_record(out) is None
    claim_output(_deployment(out, source="defs.yaml"), "qa")
    claim_output(_deployment(out, tasks="chat", source="defs.yaml"), "chat")
    assert read_record(out).only_tasks == ["qa", "chat"]
    with pytest.raises(SettingsError, match="disagree"):
        claim_output(_deployment(out, model_path="/other", source="other.yaml"), "qa")
