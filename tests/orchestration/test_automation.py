"""New data becomes new partitions (sensor) and gets materialized (schedule), on a real instance; and the
whole loop driven by a real `dagster-daemon` on a real DAGSTER_HOME."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
)
from dagster._core.utils import make_new_run_id
from tests_support import CONFIGS, REPO, Settings, cli_env, instance_at, llm_infer, write_qa_input

from llm_infer_dagster.orchestration.assets.factory import build_task_assets
from llm_infer_dagster.orchestration.sensors import (
    build_missing_shards_schedule,
    build_report_sensor,
    build_shard_sensor,
)
from llm_infer_dagster.tasks.loader import load_task


def _task_copy(tmp: Path, settings: dict) -> Path:
    configs = tmp / "configs"
    shutil.copytree(CONFIGS / "qa_regex", configs / "qa_regex", ignore=shutil.ignore_patterns("data"))
    shutil.copy(CONFIGS / "default_sampling_params.json", configs)
    (configs / "qa_regex" / "task_settings.json").write_text(json.dumps(settings))
    return configs


@pytest.fixture()
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = tmp_path / "data"
    write_qa_input(data, files=1, rows=5)
    configs = _task_copy(tmp_path, {"input_path": str(data), "shard_size": 2})
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    task = load_task(configs, "qa_regex")
    settings = Settings(task_configs=str(configs), output_dir=str(tmp_path / "out"))
    bundle = build_task_assets(task, settings.deployment)
    with DagsterInstance.get() as instance:
        yield instance, bundle, settings, data


def _tick(sensor, instance, settings):
    result = sensor(build_sensor_context(instance=instance, resources={"settings": settings.run}))
    if isinstance(result, SensorResult):
        for req in result.dynamic_partitions_requests:  # what the daemon does with the result
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        for event in result.asset_events:
            instance.report_runless_asset_event(event)
    return result


def test_a_shrunk_file_is_reported_and_its_shards_are_kept_out_of_scheduled_runs(setup) -> None:
    instance, bundle, settings, data = setup
    write_qa_input(data, files=1, rows=9)  # 5 shards of 2 rows
    _tick(build_shard_sensor(bundle), instance, settings)
    keys = instance.get_dynamic_partitions("qa_regex_shards")
    for k in keys:
        for a in ("raw", "prompts", "completions", "answers"):
            instance.report_runless_asset_event(AssetMaterialization(bundle.key(a), partition=k))
    part0 = data / "part-000.jsonl"
    part0.write_text("".join(part0.read_text().splitlines(keepends=True)[:3]))  # 9 rows -> 3
    tick = _tick(build_shard_sensor(bundle), instance, settings)
    assert isinstance(tick, SensorResult)
    (report,) = [e for e in tick.asset_events if "input_change" in e.metadata]
    assert report.metadata["input_change"].value == "shrunk"
    assert report.metadata["kept_shards"].value == ", ".join(keys[1:])  # rows 2..9 are gone: kept, not redone
    assert not [e for e in tick.asset_events if e.asset_key == bundle.key("input")]  # nothing turns stale
    context = build_schedule_context(
        instance=instance, scheduled_execution_time=datetime.now(UTC), resources={"settings": settings.run}
    )
    assert isinstance(build_missing_shards_schedule(bundle)(context), SkipReason)
    assert isinstance(_tick(build_shard_sensor(bundle), instance, settings), SkipReason)


def test_sensor_adds_exactly_the_new_shards_and_nothing_on_a_second_tick(setup) -> None:
    instance, bundle, settings, data = setup
    sensor = build_shard_sensor(bundle)
    first = _tick(sensor, instance, settings)
    assert isinstance(first, SensorResult)
    keys = instance.get_dynamic_partitions("qa_regex_shards")
    assert len(keys) == 3  # 5 rows in 2-row shards (task_settings.json sets the shard size)
    # The tick history says what the tick did (Dagster calls a tick without runs "skipped").
    said = first.skip_reason.skip_message if first.skip_reason else ""
    assert said.startswith("registered 3 new shard(s) (1 file(s) read); no run launched"), said
    assert isinstance(_tick(sensor, instance, settings), SkipReason)

    write_qa_input(data, files=2, rows=5)  # rewrites part-000 identically (new mtime), adds part-001
    third = _tick(sensor, instance, settings)
    assert isinstance(third, SensorResult)
    after = instance.get_dynamic_partitions("qa_regex_shards")
    assert after[:3] == keys and len(after) == 6  # old keys untouched, three new
    skip = _tick(sensor, instance, settings)
    assert isinstance(skip, SkipReason) and "0 file(s) re-read" in str(skip.skip_message)

    # An edited file is reported (not silently kept); a vanished one too.
    part0 = data / "part-000.jsonl"
    part0.write_text(part0.read_text().replace("What is", "What's"))
    (data / "part-001.jsonl").unlink()
    edited = _tick(sensor, instance, settings)
    assert isinstance(edited, SensorResult)
    reports = [e for e in edited.asset_events if "input_change" in e.metadata]
    changes = {e.metadata["input_change"].value: e.metadata["file"].value for e in reports}
    assert changes == {"modified": str(part0), "vanished": str(data / "part-001.jsonl")}
    # Every edited shard gets a new input data version (so it shows stale); the vanished file is reported once.
    observed = {e.partition for e in edited.asset_events if e.asset_key == bundle.key("input")}
    assert observed == set(keys)
    assert isinstance(_tick(sensor, instance, settings), SkipReason)


def test_schedule_requests_exactly_the_missing_shards(setup) -> None:
    instance, bundle, settings, data = setup
    write_qa_input(data, files=1, rows=9)  # 5 shards
    _tick(build_shard_sensor(bundle), instance, settings)
    keys = instance.get_dynamic_partitions("qa_regex_shards")
    assert len(keys) == 5
    for k in (keys[0], keys[1], keys[3]):  # shards 0, 1, 3 answered; 4 has completions only; 2 nothing
        for a in ("raw", "prompts", "completions", "answers"):
            instance.report_runless_asset_event(AssetMaterialization(bundle.key(a), partition=k))
    for a in ("raw", "prompts", "completions"):
        instance.report_runless_asset_event(AssetMaterialization(bundle.key(a), partition=keys[4]))
    schedule = build_missing_shards_schedule(bundle)
    context = build_schedule_context(
        instance=instance, scheduled_execution_time=datetime.now(UTC), resources={"settings": settings.run}
    )
    requests = schedule(context)
    got = sorted(
        (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"],
         tuple(sorted(k.path[-1] for k in r.asset_selection)))
        for r in requests
    )  # fmt: skip
    assert got == sorted([
        (keys[2], keys[2], ("answers", "completions", "prompts", "raw")),
        (keys[4], keys[4], ("answers",)),
    ])  # fmt: skip
    for a in ("raw", "prompts", "completions", "answers"):
        for k in keys:
            instance.report_runless_asset_event(AssetMaterialization(bundle.key(a), partition=k))
    done = schedule(
        build_schedule_context(
            instance=instance, scheduled_execution_time=datetime.now(UTC), resources={"settings": settings.run}
        )
    )
    assert isinstance(done, SkipReason)

    # A UI materialization of the task's assets runs as __ASSET_JOB: the schedule must wait for it too.
    ui_run = DagsterRun(job_name="__ASSET_JOB", run_id=make_new_run_id(), status=DagsterRunStatus.STARTED,
                        asset_selection=frozenset({bundle.key("completions")}))  # fmt: skip
    instance.add_run(ui_run)
    busy = schedule(
        build_schedule_context(
            instance=instance, scheduled_execution_time=datetime.now(UTC), resources={"settings": settings.run}
        )
    )
    assert isinstance(busy, SkipReason) and ui_run.run_id in str(busy.skip_message)


def test_schedule_also_backfills_the_tasks_named_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    write_qa_input(data, files=1, rows=3)
    qwen = {"model_path": str(tmp_path / "qwen"), "model_type": "hf"}
    configs = _task_copy(tmp_path, {"input_path": str(data), "shard_size": 2, "models": {"qwen": qwen}})
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    settings = Settings(task_configs=str(configs), output_dir=str(tmp_path / "out"))
    bundle = build_task_assets(load_task(configs, "qa_regex"), settings.deployment)
    with DagsterInstance.get() as instance:
        _tick(build_shard_sensor(bundle), instance, settings)
        keys = instance.get_dynamic_partitions("qa_regex_shards")
        for k in keys:  # the run's model is done; the named model never ran
            for a in ("raw", "prompts", "completions", "answers"):
                instance.report_runless_asset_event(AssetMaterialization(bundle.key(a), partition=k))
        context = build_schedule_context(
            instance=instance, scheduled_execution_time=datetime.now(UTC), resources={"settings": settings.run}
        )
        requests = build_missing_shards_schedule(bundle)(context)
        assert [
            (
                r.tags["dagster/asset_partition_range_start"],
                r.tags["dagster/asset_partition_range_end"],
                r.tags["llm_infer/model"],
                sorted("/".join(k.path) for k in r.asset_selection),
            )
            for r in requests
        ] == [
            (keys[0], keys[-1], "qwen", ["qa_regex/qwen/answers", "qa_regex/qwen/completions"])
        ]  # fmt: skip  (the prompts are there and fresh: they are not made again)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_daemon_registers_and_materializes_a_new_file_without_rerunning_old_shards(tmp_path, tiny_model_path):
    data, out = tmp_path / "data", tmp_path / "out"
    write_qa_input(data, files=1, rows=4)
    configs = _task_copy(tmp_path, {"input_path": str(data), "shard_size": 2,
                                    "sensor": {"enabled": True, "interval_seconds": 2},
                                    "schedule": {"enabled": True, "cron": "* * * * *"}})  # fmt: skip
    base = ["--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu", "--output_path", str(out),
            "--task_name", "qa_regex", "--config_path", str(configs)]  # fmt: skip
    first = llm_infer(*base)
    assert first.returncode == 0, first.stderr
    instance = instance_at(out)
    comp = AssetKey(["qa_regex", "completions"])
    old_keys = instance.get_dynamic_partitions("qa_regex_shards")
    assert len(old_keys) == 2
    old_count = len(instance.fetch_materializations(comp, limit=10000).records)

    env = cli_env(DAGSTER_HOME=str(out / ".dagster"), LLM_INFER_TASK_CONFIGS=str(configs), LLM_INFER_TASKS="qa_regex",
                  LLM_INFER_OUTPUT=str(out), LLM_INFER_MODEL_PATH=tiny_model_path, LLM_INFER_MODEL_TYPE="hf",
                  LLM_INFER_USE_CPU="1")  # fmt: skip
    daemon_log = tmp_path / "daemon.log"  # a file, not a pipe nobody reads: a full pipe would stall the daemon
    with daemon_log.open("wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "dagster._daemon", "run", "-w", str(REPO / "workspace.yaml")],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    try:
        write_qa_input(data, files=2, rows=4)  # a new file lands: part-001.jsonl
        answers = AssetKey(["qa_regex", "answers"])
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            keys = instance.get_dynamic_partitions("qa_regex_shards")
            if len(keys) == 4 and instance.get_materialized_partitions(answers) == set(keys):
                break
            assert daemon.poll() is None, f"dagster-daemon exited:\n{daemon_log.read_text()[-3000:]}"
            time.sleep(2)
        keys = instance.get_dynamic_partitions("qa_regex_shards")
        assert keys[:2] == old_keys and len(keys) == 4
        assert instance.get_materialized_partitions(answers) == set(keys), (
            f"new shards were not materialized; daemon log tail:\n{daemon_log.read_text()[-3000:]}"
        )
        new_records = instance.fetch_materializations(comp, limit=10000).records
        rerun = {r.partition_key for r in new_records[: len(new_records) - old_count]}
        assert rerun == set(keys[2:])  # only the new file's shards ran
        runs = [r for r in instance.get_runs() if r.tags.get("llm_infer/launched_by") == "schedule"]
        assert runs and all(r.tags["dagster/asset_partition_range_start"] in keys[2:] for r in runs)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()


def test_a_sensor_preview_that_records_nothing_loses_no_appended_row(setup) -> None:
    """Issue 10: the UI's "Preview tick result" evaluates the sensor but records none of its events."""
    instance, bundle, settings, data = setup
    sensor = build_shard_sensor(bundle)
    _tick(sensor, instance, settings)
    keys = instance.get_dynamic_partitions("qa_regex_shards")
    write_qa_input(data, files=1, rows=6)  # one row appended: fills the partial last shard
    preview = sensor(build_sensor_context(instance=instance, resources={"settings": settings.run}))
    assert isinstance(preview, SensorResult)  # evaluated (the manifest is saved), nothing recorded
    real = _tick(sensor, instance, settings)
    assert isinstance(real, SensorResult)
    observed = {e.partition for e in real.asset_events if e.asset_key == bundle.key("input")}
    assert observed == {keys[-1]}  # the grown shard is still observed, so it turns stale and is redone


def test_a_task_whose_get_file_list_fails_skips_its_tick_with_one_line(setup) -> None:
    instance, bundle, settings, data = setup
    for f in data.iterdir():
        f.unlink()
    result = build_shard_sensor(bundle)(build_sensor_context(instance=instance, resources={"settings": settings.run}))
    assert isinstance(result, SkipReason)
    assert "cannot register shards of task qa_regex" in str(result.skip_message)
    assert "returned no files" in str(result.skip_message) and "\n" not in str(result.skip_message)


def test_a_report_run_does_not_hold_back_the_shard_schedule_but_holds_back_the_report_sensor(setup) -> None:
    """A report run reads answers and writes no shard: shard work goes on; a second report waits for it."""
    instance, bundle, settings, data = setup
    _tick(build_shard_sensor(bundle), instance, settings)
    report_run = DagsterRun(
        job_name=bundle.report_job.name,
        run_id=make_new_run_id(),
        status=DagsterRunStatus.STARTED,
        asset_selection=frozenset({bundle.report.key}),
    )
    instance.add_run(report_run)
    context = build_schedule_context(
        instance=instance, scheduled_execution_time=datetime.now(UTC), resources={"settings": settings.run}
    )
    requests = build_missing_shards_schedule(bundle)(context)
    assert isinstance(requests, list) and requests  # every shard is missing: runs requested despite the report
    waiting = build_report_sensor(bundle)(build_sensor_context(instance=instance))
    assert isinstance(waiting, SkipReason) and report_run.run_id in str(waiting.skip_message)
