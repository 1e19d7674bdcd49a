"""A broken task folder is contained: the good tasks load, the broken one shows in Dagster with its error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    Definitions,
    materialize,
)

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.orchestration.broken_tasks import (
    BROKEN_ASSET,
    BROKEN_CHECK,
    FIX_HINT,
    BrokenTask,
    broken_task_definitions,
    broken_tasks_definitions,
    dagster_name_for,
    load_tasks_contained,
    one_line_error,
)
from llm_infer_dagster.tasks.loader import discover_tasks, load_task

REPO_TASKS = Path(__file__).resolve().parents[2] / "task_configs"


@pytest.fixture()
def task_configs(tmp_path: Path) -> Path:
    """Two good tasks (copies of qa_regex) and four broken ones, in a real task-configs folder."""
    root = tmp_path / "task_configs"
    root.mkdir()
    shutil.copy(REPO_TASKS / "default_sampling_params.json", root)
    for name in ("qa_regex", "good-two", "syntax_error", "no_extract", "bad_sampling", "exits"):
        shutil.copytree(REPO_TASKS / "qa_regex", root / name)
    (root / "syntax_error" / "task_config.py").write_text("def get_file_list(input_path:\n    return []\n")
    cfg = root / "no_extract" / "task_config.py"
    text = cfg.read_text()
    cfg.write_text(text[: text.index("def extract_answer")])
    (root / "bad_sampling" / "sampling_params.json").write_text('{"temprature": 0.5}')
    (root / "exits" / "task_config.py").write_text("import sys\nsys.exit('no GPU here')\n")
    return root


def _contained(root: Path):
    return load_tasks_contained(root, discover_tasks(root), lambda name: load_task(root, name))


def test_good_tasks_load_and_broken_ones_are_reported(task_configs: Path) -> None:
    loaded, broken = _contained(task_configs)

    assert sorted(t.name for t in loaded) == ["good-two", "qa_regex"]
    by_name = {b.name: b for b in broken}
    assert sorted(by_name) == ["bad_sampling", "exits", "no_extract", "syntax_error"]
    for b in broken:
        assert "\n" not in b.error
        assert b.folder == task_configs / b.name

    syntax = by_name["syntax_error"].error
    assert str(task_configs / "syntax_error" / "task_config.py") in syntax
    assert "SyntaxError" in syntax and "line 1" in syntax
    assert "missing function(s) extract_answer" in by_name["no_extract"].error
    assert "sampling_params.json" in by_name["bad_sampling"].error and "temprature" in by_name["bad_sampling"].error
    # not a TaskConfigError: the loader lets SystemExit through; containment reduces it to one line
    assert by_name["exits"].error == "SystemExit: no GPU here"


def test_a_named_task_that_is_not_there_is_reported(task_configs: Path) -> None:
    """LLM_INFER_TASKS may name a folder that does not exist (or is no plain name): reported, not raised."""
    loaded, broken = load_tasks_contained(
        task_configs, ["qa_regex", "nope", "../up"], lambda name: load_task(task_configs, name)
    )
    assert [t.name for t in loaded] == ["qa_regex"]
    assert [(b.name, b.dagster_name) for b in broken] == [("nope", "nope"), ("../up", "___up")]
    assert broken[0].error.startswith("no task 'nope'")
    assets, checks = broken_tasks_definitions(broken, taken={"qa_regex"})
    Definitions.validate_loadable(Definitions(assets=assets, asset_checks=checks))


def test_dagster_name_is_the_loaders(task_configs: Path) -> None:
    good = load_task(task_configs, "good-two")
    assert dagster_name_for("good-two") == good.dagster_name == "good_two"
    assert BrokenTask("a.b-c", Path("x"), "e").dagster_name == "a_b_c"


def test_one_line_error() -> None:
    err = SyntaxError("invalid syntax", ("/t/task_config.py", 3, 5, "def (", 3, 6))
    assert one_line_error(err) == "SyntaxError: invalid syntax (/t/task_config.py, line 3)"
    assert one_line_error(ValueError("a\n  b")) == "ValueError: a b"
    assert one_line_error(KeyError()) == "KeyError"
    assert one_line_error(TaskConfigError("/t/x.py: bad")) == "/t/x.py: bad"
    assert len(one_line_error(RuntimeError("x" * 10_000))) == 2000


def test_definitions_resolve_and_placeholder_carries_the_error(task_configs: Path) -> None:
    _, broken = _contained(task_configs)
    assets, checks = broken_tasks_definitions(broken)
    defs = Definitions(assets=assets, asset_checks=checks)
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()

    for b in broken:
        key = AssetKey([b.dagster_name, BROKEN_ASSET])
        node = graph.get(key)
        assert not node.is_materializable
        assert node.group_name == b.dagster_name
        assert node.description is not None
        assert node.description.startswith(b.error) and node.description.endswith(FIX_HINT)
        assert node.metadata["error"].value == b.error
        assert node.metadata["folder"].value == str(b.folder)
        assert "broken" in node.kinds
        assert AssetCheckKey(key, BROKEN_CHECK) in graph.asset_check_keys
        spec = graph.get_check_spec(AssetCheckKey(key, BROKEN_CHECK))
        assert spec.blocking and b.error in (spec.description or "")


def test_executing_the_check_fails_with_the_error(task_configs: Path) -> None:
    _, broken = _contained(task_configs)
    b = next(t for t in broken if t.name == "no_extract")
    assets, checks = broken_task_definitions(b.name, b.dagster_name, b.folder, b.error)
    key = AssetKey([b.dagster_name, BROKEN_ASSET])

    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [*assets, *checks], instance=instance, selection=AssetSelection.checks_for_assets(key), raise_on_error=False
        )
        assert not result.success  # blocking + ERROR: the run that executes it fails
        (evaluation,) = result.get_asset_check_evaluations()
        assert evaluation.asset_key == key and evaluation.check_name == BROKEN_CHECK
        assert not evaluation.passed
        assert evaluation.severity == AssetCheckSeverity.ERROR
        assert evaluation.description == b.error
        assert evaluation.metadata["folder"].value == str(b.folder)

        # and through the code location's own asset job (what the UI's "Execute" and `dagster asset check` use)
        job = Definitions(assets=assets, asset_checks=checks).resolve_implicit_global_asset_job_def()
        run = job.execute_in_process(instance=instance, raise_on_error=False)
        assert [(e.passed, e.description) for e in run.get_asset_check_evaluations()] == [(False, b.error)]


def test_colliding_dagster_names_do_not_break_the_location(tmp_path: Path) -> None:
    broken = [BrokenTask(n, tmp_path / n, f"{n}: broken") for n in ("a-b", "a.b", "a_b")]
    assets, checks = broken_tasks_definitions(broken, taken={"a_b"})
    keys = [s.key for s in assets]
    assert keys == [AssetKey([n, BROKEN_ASSET]) for n in ("a_b_broken", "a_b_broken_2", "a_b_broken_3")]
    Definitions.validate_loadable(Definitions(assets=assets, asset_checks=checks))


def test_keyboard_interrupt_is_not_contained(tmp_path: Path) -> None:
    def load(name: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_tasks_contained(tmp_path, ["x"], load)


def test_the_code_location_loads_the_good_tasks_beside_a_broken_one(task_configs: Path, tmp_path: Path) -> None:
    """What the UI, the daemon and `dagster job execute` load: every good task's assets, jobs, sensors and
    schedules, and each broken folder as a placeholder whose description and check carry its error."""
    from llm_infer_dagster.deployment import Deployment
    from llm_infer_dagster.orchestration.definitions import build_definitions

    defs = build_definitions(Deployment.from_env(task_configs=str(task_configs), output_dir=str(tmp_path / "out")))
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    for good in ("qa_regex", "good_two"):
        assert {f"{good}/{a}" for a in ("input", "raw", "prompts", "completions", "answers")} <= keys
        assert defs.resolve_job_def(f"{good}_job") is not None
        assert defs.resolve_sensor_def(f"{good}_new_shards") is not None
        assert defs.resolve_schedule_def(f"{good}_missing_shards") is not None
    node = graph.get(AssetKey(["syntax_error", BROKEN_ASSET]))
    assert "SyntaxError" in (node.description or "")
    assert AssetCheckKey(AssetKey(["no_extract", BROKEN_ASSET]), BROKEN_CHECK) in graph.asset_check_keys


@pytest.mark.slow
def test_llm_infer_on_a_broken_task_exits_2_with_its_one_line_error(task_configs: Path, tmp_path: Path) -> None:
    from tests_support import llm_infer

    r = llm_infer("--task_name", "no_extract", "--config_path", str(task_configs), "--output_path",
                  str(tmp_path / "out"), "--model_path", "/nope", "--use_cpu")  # fmt: skip
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "missing function(s) extract_answer" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
