"""Runs whose process was SIGKILLed are reported failed (and only those), on a real sqlite DagsterInstance."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, instance_for_test
from dagster._core.test_utils import create_run_for_test

from llm_infer_dagster.orchestration.run_health import (
    HOST_TAG,
    PID_TAG,
    RUN_TAG,
    mark_dead_runs_failed,
    process_liveness,
    process_tags,
)


@pytest.fixture()
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    (tmp_path / "home").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "home")) as inst:
        yield inst


def _dead_pid_tags() -> dict[str, str]:
    """process_tags() as a child process would write them; the child is gone (and reaped) when this returns."""
    code = (
        "import json; from llm_infer_dagster.orchestration.run_health import process_tags; "
        "print(json.dumps(process_tags()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import json

    return json.loads(out)


def _failure_message(instance: DagsterInstance, run_id: str) -> str:
    events = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
    assert len(events) == 1
    return events[0].dagster_event.message or ""  # type: ignore[union-attr]


def test_dead_pid_is_marked_failed_with_why(instance: DagsterInstance) -> None:
    tags = _dead_pid_tags()
    run = create_run_for_test(instance, status=DagsterRunStatus.STARTED, tags=tags)
    assert process_liveness(tags) == "dead"
    assert mark_dead_runs_failed(instance) == [run.run_id]
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE  # type: ignore[union-attr]
    msg = _failure_message(instance, run.run_id)
    assert f"pid {tags[PID_TAG]}" in msg and "is gone" in msg
    assert mark_dead_runs_failed(instance) == []  # finished now: not reported twice


@pytest.mark.parametrize("status", [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING])
def test_dead_pid_before_start_is_marked_failed(instance: DagsterInstance, status: DagsterRunStatus) -> None:
    run = create_run_for_test(instance, status=status, tags=_dead_pid_tags())
    assert mark_dead_runs_failed(instance) == [run.run_id]
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE  # type: ignore[union-attr]


def test_dead_pid_while_canceling_is_marked_canceled(instance: DagsterInstance) -> None:
    run = create_run_for_test(instance, status=DagsterRunStatus.CANCELING, tags=_dead_pid_tags())
    assert mark_dead_runs_failed(instance) == [run.run_id]
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.CANCELED  # type: ignore[union-attr]


def test_live_other_host_untagged_and_filtered_runs_are_untouched(instance: DagsterInstance) -> None:
    dead = _dead_pid_tags()
    runs = [
        create_run_for_test(instance, status=DagsterRunStatus.STARTED, tags=process_tags()),  # this live process
        create_run_for_test(instance, status=DagsterRunStatus.STARTED, tags={**dead, HOST_TAG: "elsewhere"}),
        create_run_for_test(instance, status=DagsterRunStatus.STARTED, tags={}),  # launched by Dagster
        create_run_for_test(instance, job_name="other_job", status=DagsterRunStatus.STARTED, tags=dead),
    ]
    assert mark_dead_runs_failed(instance, lambda r: r.job_name != "other_job") == []
    assert [instance.get_run_by_id(r.run_id).status for r in runs] == [r.status for r in runs]  # type: ignore[union-attr]


def test_reused_pid_counts_as_dead(instance: DagsterInstance) -> None:
    """Our own live pid, but recorded with another start time: the process that ran the run is gone."""
    tags = process_tags()
    tags["llm_infer/pid_started"] = tags["llm_infer/pid_started"].replace("ticks:", "ticks:9")
    run = create_run_for_test(instance, status=DagsterRunStatus.STARTED, tags=tags)
    assert mark_dead_runs_failed(instance) == [run.run_id]


def test_tags_copied_from_another_run_are_not_trusted(instance: DagsterInstance) -> None:
    """A re-execution may copy its parent's tags: dead pid, but not this run's process."""
    dead = _dead_pid_tags()
    parent = create_run_for_test(instance, status=DagsterRunStatus.FAILURE, tags=dead)
    copied = create_run_for_test(
        instance,
        status=DagsterRunStatus.STARTED,
        tags={**dead, "dagster/parent_run_id": parent.run_id},
        parent_run_id=parent.run_id,
        root_run_id=parent.run_id,
    )
    stamped_elsewhere = create_run_for_test(
        instance, status=DagsterRunStatus.STARTED, tags={**dead, RUN_TAG: parent.run_id}
    )
    assert mark_dead_runs_failed(instance) == []
    # Once its own executor stamps it (RUN_TAG = its id), a re-execution is judged like any run.
    instance.add_run_tags(copied.run_id, {RUN_TAG: copied.run_id})
    assert mark_dead_runs_failed(instance) == [copied.run_id]
    assert instance.get_run_by_id(stamped_elsewhere.run_id).status == DagsterRunStatus.STARTED  # type: ignore[union-attr]


_CHILD = """
import os, signal, sys
from pathlib import Path

from dagster import DagsterInstance, execute_job, in_process_executor, job, op, reconstructable

from llm_infer_dagster.orchestration.dagster_internals.gpu_executor import gpu_executor
from llm_infer_dagster.orchestration.run_health import process_tags


@op
def die() -> None:
    Path(os.environ["RUN_HEALTH_MARK"]).write_text("step started")
    # The process that orchestrates the run: this one (in-process executor) or the step's parent (GPU executor).
    os.kill(os.getpid() if os.environ["RUN_HEALTH_EXECUTOR"] == "in_process" else os.getppid(), signal.SIGKILL)


@job(executor_def=in_process_executor)
def in_process():
    die()


@job(executor_def=gpu_executor)
def gpu():
    die()


if __name__ == "__main__":
    name = os.environ["RUN_HEALTH_EXECUTOR"]
    tags = process_tags() if name == "in_process" else {}  # the GPU executor writes them itself
    execute_job(reconstructable(in_process if name == "in_process" else gpu), DagsterInstance.get(), tags=tags)
    sys.exit("the run should have been killed")
"""


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["in_process", "gpu"])
def test_killed_execute_job_run_is_marked_failed(tmp_path: Path, executor: str) -> None:
    """A real run whose orchestrating process is SIGKILLed mid-step stays STARTED, until the check fails it."""
    home = tmp_path / "home"
    home.mkdir()
    script = tmp_path / "killed_run.py"
    script.write_text(textwrap.dedent(_CHILD))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RUN_HEALTH_MARK": str(tmp_path / "mark"),
        "RUN_HEALTH_EXECUTOR": executor,
        "LLM_INFER_GPU_LOCK_DIR": str(tmp_path / "locks"),
    }
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.communicate(timeout=300)[0].decode(errors="replace")
    assert proc.returncode == -9, out[-3000:]
    assert (tmp_path / "mark").exists()
    with DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == DagsterRunStatus.STARTED
        assert run.tags[PID_TAG] == str(proc.pid)
        assert run.tags.get(RUN_TAG) == (run.run_id if executor == "gpu" else None)
        assert mark_dead_runs_failed(instance) == [run.run_id]
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE  # type: ignore[union-attr]
        assert "is gone" in _failure_message(instance, run.run_id)
