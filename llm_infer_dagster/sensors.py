"""Keeping a task up to date: a sensor that turns new input into new shards, a schedule that runs them.

- ``<task>_new_shards`` (sensor): scans ``get_file_list`` on the task's input, re-reads only new or changed
  files (the manifest keeps size, mtime and content hash), registers the new shards as partitions, and
  reports input files that shrank, were edited in place, or vanished. It never renumbers a shard.
- ``<task>_missing_shards`` (schedule): requests runs for every shard not yet answered, as few runs as
  partition ranges allow (the model starts once per run), and skips a tick while a run of the task is going.
"""

from __future__ import annotations

from dagster import (
    AssetKey,
    AssetObservation,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)

from llm_infer_dagster.assets.factory import TaskAssets
from llm_infer_dagster.registry import partitions_def_for, sync_manifest
from llm_infer_dagster.settings import InferenceSettings
from llm_infer_dagster.tasks.planning import plan_runs

ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def build_shard_sensor(bundle: TaskAssets) -> SensorDefinition:
    task = bundle.task
    pdef = partitions_def_for(task)

    @sensor(
        name=f"{task.dagster_name}_new_shards",
        minimum_interval_seconds=task.settings.sensor_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING if task.settings.sensor_enabled else DefaultSensorStatus.STOPPED,
        description=f"Register shards of new or grown input files of task {task.name} as partitions.",
    )
    def new_shards(context: SensorEvaluationContext, settings: InferenceSettings) -> SensorResult | SkipReason:
        reg, to_add = sync_manifest(
            context.instance, task, settings.store(task.name), task.input_path(settings.input_path),
            shard_size=task.settings.shard_size,
        )  # fmt: skip
        events = []
        for kind, paths in (("shrunk", reg.shrunk_files), ("modified", reg.modified_files),
                            ("vanished", reg.vanished_files)):  # fmt: skip
            for path in paths:
                keys = [s.key for s in reg.manifest.shards.values() if s.file == path]
                context.log.warning(f"input file {path} {kind}; its shards {', '.join(keys)} keep their old results")
                events.append(AssetObservation(
                    asset_key=bundle.key("raw"),
                    metadata={"input_change": kind, "file": path, "shards": ", ".join(keys)},
                ))  # fmt: skip
        if not to_add and not events:
            return SkipReason(f"no new input ({reg.files_read} file(s) re-read)")
        context.log.info(f"registering {len(to_add)} new shard(s) of task {task.name}")
        return SensorResult(
            dynamic_partitions_requests=[pdef.build_add_request(to_add)] if to_add else [],
            asset_events=events,
        )

    return new_shards


def build_missing_shards_schedule(bundle: TaskAssets) -> ScheduleDefinition:
    task = bundle.task
    answers, completions = bundle.key("answers"), bundle.key("completions")

    @schedule(
        name=f"{task.dagster_name}_missing_shards",
        cron_schedule=task.settings.schedule_cron,
        job=bundle.job,
        default_status=(
            DefaultScheduleStatus.RUNNING if task.settings.schedule_enabled else DefaultScheduleStatus.STOPPED
        ),
        description=f"Materialize every shard of task {task.name} that has no answers yet.",
    )
    def missing_shards(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
        instance = context.instance
        active = instance.get_runs(RunsFilter(job_name=bundle.job.name, statuses=ACTIVE), limit=1)
        if active:
            return SkipReason(f"run {active[0].run_id} of {bundle.job.name} is still going")
        keys = list(instance.get_dynamic_partitions(partitions_def_for(task).name or ""))
        plans = plan_runs(keys, instance.get_materialized_partitions(completions),
                          instance.get_materialized_partitions(answers))  # fmt: skip
        if not plans:
            return SkipReason("every shard is answered")
        return [
            RunRequest(
                run_key=f"{context.scheduled_execution_time}:{p.first}..{p.last}:{len(p.assets)}",
                tags={**p.tags, "llm_infer/launched_by": "schedule"},
                asset_selection=[AssetKey([task.dagster_name, a]) for a in p.assets],
            )
            for p in plans
        ]

    return missing_shards
