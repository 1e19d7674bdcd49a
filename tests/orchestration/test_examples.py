"""Every shipped example task runs as a user meets it: through `llm-infer` and through its sensor, no error."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context
from dagster._core.storage.defs_state.base import set_defs_state_storage
from tests_support import CONFIGS, llm_infer

from llm_infer_dagster.deployment import Deployment
from llm_infer_dagster.orchestration.definitions import build_definitions
from llm_infer_dagster.tasks.loader import discover_tasks, load_task

EXAMPLES = discover_tasks(CONFIGS)


def test_the_examples_are_the_ones_documented() -> None:
    assert {"basic_example", "chat_example", "qa_regex", "score_example"} <= set(EXAMPLES)
    assert {"embed_example", "classify_example", "reward_example"} <= set(EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("task", EXAMPLES)
def test_each_example_runs_through_llm_infer(task: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    out = tmp_path / "out"
    kind = load_task(CONFIGS, task).settings.task  # classify / reward need a model with their head
    # the image example needs a vision-language model (on a text model each row would be an error)
    fixture = "tiny_vlm_path" if task == "image_example" else "tiny_model_path"
    model = request.getfixturevalue({"classify": "tiny_classifier_path", "reward": "tiny_reward_path"}.get(
        kind, fixture))  # fmt: skip
    r = llm_infer("--task_name", task, "--config_path", str(CONFIGS), "--output_path", str(out),
                  "--model_path", model, "--model_type", "hf", "--use_cpu", "--limit", "3")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    done, total = last.split(" shards done")[0].split("/")
    assert done == total and int(total) >= 1, last
    assert task != "image_example" or " 0 rows failed" in last, last
    assert "Traceback" not in r.stderr and "error" not in r.stderr.lower(), r.stderr[-3000:]
    assert any((out / "results" / "extract").iterdir())


def test_each_examples_sensor_registers_its_shards_without_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    defs = build_definitions(Deployment.from_env(task_configs=str(CONFIGS), output_dir=str(tmp_path / "out")))
    # Resolved (and cached) outside any instance's defs-state context, as in test_staleness.py: Dagster's load
    # reads the current defs-state storage, whose instance an earlier test may have left dead (seen in a full
    # run: "Attempted to resolve undefined DagsterInstance weakref"). These definitions keep no defs state.
    with set_defs_state_storage(None):
        defs.get_repository_def()
    with DagsterInstance.get() as instance:
        for task in EXAMPLES:
            sensor = defs.resolve_sensor_def(f"{task}_new_shards")
            first = sensor(build_sensor_context(instance=instance))
            assert isinstance(first, SensorResult), (task, first)
            added = [k for req in first.dynamic_partitions_requests for k in req.partition_keys]
            assert added, task
            for req in first.dynamic_partitions_requests:  # what the daemon does with the tick
                instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
            for event in first.asset_events:
                instance.report_runless_asset_event(event)
            again = sensor(build_sensor_context(instance=instance))
            assert isinstance(again, SkipReason) and "no new input" in (again.skip_message or ""), (task, again)
