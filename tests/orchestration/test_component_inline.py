"""The LLMInferComponent with the task inline (task.yaml's fields in its defs.yaml): loaded by Dagster's own
component loading, it gives the same code versions as a task.yaml folder with the same fields, and a defs.yaml
that names no task, or two, is one line."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import dagster as dg
import pytest
from dagster.components.testing import create_defs_folder_sandbox

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.tasks.loader import discover_tasks, load_task

FIELDS = """\
dataset: {path: data}
prompt: "How much is {{ question }}? Answer with a number."
answer: {regex: "-?\\\\d+"}
score: {column: gold, match: exact}
sampling: {max_tokens: 8, temperature: 0}
"""
ROWS = "".join(json.dumps({"question": f"{i} + 1", "gold": i + 1}) + "\n" for i in range(5))
STEPS = ("raw", "prompts", "completions", "answers")


def _data(folder: Path) -> None:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "part.jsonl").write_text(ROWS)


def _defs(folder: Path, attributes: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body = textwrap.indent(attributes, "  ")
    (folder / "defs.yaml").write_text(f"type: llm_infer_dagster.LLMInferComponent\nattributes:\n{body}")
    return folder / "defs.yaml"


def _versions(defs: dg.Definitions, task: str) -> dict[str, str | None]:
    graph = defs.resolve_asset_graph()
    return {step: graph.get(dg.AssetKey([task, step])).code_version for step in STEPS}


def test_an_inline_task_has_the_versions_of_the_same_task_yaml_folder(tmp_path: Path) -> None:
    with create_defs_folder_sandbox() as sandbox:
        defs_root = sandbox.defs_folder_path
        inline = defs_root / "inline_qa"
        _data(inline)
        _defs(inline, FIELDS + f"output_path: {tmp_path / 'out_inline'}\n")
        folder = tmp_path / "tasks" / "folder_qa"
        _data(folder)
        (folder / "task.yaml").write_text(FIELDS)
        _defs(defs_root / "folder_qa", f"task_folder: {folder}\noutput_path: {tmp_path / 'out_folder'}\n")
        named = defs_root / "other_folder"
        _data(named)
        _defs(named, FIELDS + f"name: named_qa\noutput_path: {tmp_path / 'out_named'}\n")

        with sandbox.load_component_and_build_defs(defs_path=inline) as (component, _):
            assert component.prompt == "How much is {{ question }}? Answer with a number."  # not Dagster's template
        with sandbox.build_all_defs() as defs:
            by_inline, by_folder = _versions(defs, "inline_qa"), _versions(defs, "folder_qa")
            assert all(by_inline.values()) and by_inline == by_folder
            assert _versions(defs, "named_qa") == by_inline  # the name attribute names the task, not the folder

        # llm-infer (and a code location given only the output folder) load the same task from the defs folder.
        assert discover_tasks(defs_root) == ["inline_qa", "named_qa"]  # folder_qa names a folder elsewhere
        task = load_task(defs_root, "inline_qa")
        assert task.is_yaml and task.config_file == inline / "defs.yaml"
        row = task.read_rows(task.list_files(task.input_path(None))[0])[2]
        assert task.format_prompt(row) == "How much is 2 + 1? Answer with a number."
        assert load_task(defs_root, "named_qa").folder == named.resolve()


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ("task_folder: tasks/qa\nprompt: x\n", r"defs.yaml: attributes give both task_folder and the task inline "
                                               r"\(prompt\); keep one"),
        ("", r"defs.yaml: attributes name no task; give task_folder, or the task inline"),
        (FIELDS + "name: 'a b'\n", r"defs.yaml: attributes.name 'a b' is not a plain task name"),
    ],
)  # fmt: skip
def test_a_defs_yaml_naming_no_task_or_two_is_one_line(tmp_path: Path, attributes: str, expected: str) -> None:
    with create_defs_folder_sandbox() as sandbox:
        here = sandbox.defs_folder_path / "qa"
        _data(here)
        _defs(here, attributes + f"output_path: {tmp_path / 'out'}\n")
        with pytest.raises(Exception) as info, sandbox.build_all_defs():
            pass
        messages = [str(e) for e in _chain(info.value)]
        assert any(isinstance(e, TaskConfigError) for e in _chain(info.value)), messages
        assert any(re.search(expected, m) and "\n" not in m for m in messages), messages


def _chain(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def test_bad_inline_fields_are_one_line_naming_defs_yaml_and_the_attribute(tmp_path: Path) -> None:
    root = tmp_path / "defs"
    _data(root / "qa")
    cases = {
        "dataset: {pth: data}\nprompt: x\n": r"unknown key 'attributes.dataset.pth'; did you mean 'path'\?",
        "dataset: {path: data}\nprompt: '{{ questoin }}'\n": r"attributes.prompt names column 'questoin'",
        "dataset: {path: nowhere}\nprompt: x\n": r"attributes.dataset.path 'nowhere' does not exist",
        "dataset: {path: data}\nprompt: x\nsampling: {temprature: 0}\n": r"attributes.sampling.*temprature",
    }
    for attributes, expected in cases.items():
        _defs(root / "qa", attributes + "output_path: out\n")
        with pytest.raises(TaskConfigError, match=expected) as info:
            load_task(root, "qa")
        assert "\n" not in str(info.value) and str(root / "qa" / "defs.yaml") in str(info.value)


@pytest.mark.slow
def test_dg_check_defs_loads_an_inline_task_and_names_a_defs_yaml_with_two(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    from tests_support import cli_env

    repo = Path(__file__).resolve().parents[2]
    example = repo / "examples" / "llm_infer_project"
    proj = tmp_path / "proj"
    shutil.copytree(example, proj, ignore=shutil.ignore_patterns("__pycache__", "llm_infer_output"))
    defs_root = proj / "src" / "llm_infer_project" / "defs"
    shutil.rmtree(defs_root)
    _data(defs_root / "inline_qa")
    _defs(defs_root / "inline_qa", FIELDS + f"output_path: {tmp_path / 'out'}\n")
    dg_cli = shutil.which("dg") or str(Path(sys.executable).parent / "dg")

    def check() -> subprocess.CompletedProcess[str]:
        env = cli_env(PYTHONPATH=f"{proj / 'src'}{os.pathsep}{repo}")  # this checkout's package, not an install
        return subprocess.run([dg_cli, "check", "defs"], cwd=proj, env=env, capture_output=True, text=True, timeout=300)

    ok = check()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    _defs(defs_root / "inline_qa", FIELDS + f"task_folder: elsewhere\noutput_path: {tmp_path / 'out'}\n")
    both = check()
    assert both.returncode != 0
    assert (
        "attributes give both task_folder and the task inline (dataset, prompt, answer, score, sampling); keep one"
        in (both.stdout + both.stderr)
    )


def test_the_task_attribute_makes_a_pooling_task_of_a_folder_and_of_an_inline_task(tmp_path: Path) -> None:
    """``task: embed`` on the Component: the completions (and answers) version says so, raw and prompts keep
    theirs, and the recorded deployment carries it; inline, llm-infer over the defs folder reads it too."""
    with create_defs_folder_sandbox() as sandbox:
        defs_root = sandbox.defs_folder_path
        folder = tmp_path / "tasks" / "qa"
        _data(folder)
        (folder / "task.yaml").write_text(FIELDS)
        _defs(defs_root / "plain", f"task_folder: {folder}\noutput_path: {tmp_path / 'o1'}\n")
        with sandbox.load_component_and_build_defs(defs_path=defs_root / "plain") as (_, defs):
            plain = _versions(defs, "qa")
        _defs(defs_root / "plain", f"task_folder: {folder}\ntask: embed\noutput_path: {tmp_path / 'o2'}\n")
        with sandbox.load_component_and_build_defs(defs_path=defs_root / "plain") as (component, defs):
            embed = _versions(defs, "qa")
            assert component.task == "embed"
        assert embed["raw"] == plain["raw"] and embed["prompts"] == plain["prompts"]
        assert embed["completions"] != plain["completions"] and embed["answers"] != plain["answers"]

        _data(defs_root / "inline_qa")
        _defs(defs_root / "inline_qa", FIELDS + f"task: classify\noutput_path: {tmp_path / 'o3'}\n")
        assert load_task(defs_root, "inline_qa").settings.task == "classify"
        _defs(defs_root / "inline_qa", FIELDS + f"task: embedd\noutput_path: {tmp_path / 'o3'}\n")
        with pytest.raises(TaskConfigError, match=r"attributes.task is 'embedd'; give one of generate, embed"):
            load_task(defs_root, "inline_qa")


def test_the_deployment_records_the_task_kind_and_llm_infer_must_agree(tmp_path: Path) -> None:
    from llm_infer_dagster.deployment import Deployment, claim_output, read_record
    from llm_infer_dagster.errors import SettingsError

    out = tmp_path / "out"
    declared = Deployment.from_env(task_configs=str(tmp_path), tasks="qa", output_dir=str(out), task_kind="embed",
                                   source="defs.yaml")  # fmt: skip
    claim_output(declared, "qa")
    recorded = read_record(out)
    assert recorded is not None and recorded.task_kind == "embed"
    other = declared.model_copy(update={"task_kind": None, "source": "llm-infer"})
    with pytest.raises(SettingsError, match=r"task_kind 'embed' -> None"):
        claim_output(other, "qa")
