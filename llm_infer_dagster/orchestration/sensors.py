"""Keeping a task up to date: a sensor that turns new input into new shards, a schedule that runs them.

- ``<task>_new_shards`` (sensor): scans ``get_file_list`` on the task's input, re-reads only new or changed
  files (the manifest keeps size, mtime and content hash), registers the new shards as partitions, and
  reports input files that shrank, were edited in place, or vanished. It never renumbers a shard.
- ``<task>_missing_shards`` (schedule): requests runs for every shard not yet answered or stale (grown input
  rows, another prompt, model or sampling), as few runs as partition ranges allow (the model starts once per
  run), and skips a tick while a run of the task is going.
- ``<task>_report_refresh`` (sensor, on when the schedule is): once no run of the task is going and an answers
  shard of any model was recorded after the report last read them, requests one run of ``<task>_report``.
  (The schedule cannot: it targets the shard job, and the report cannot share a run with the shards step,
  which records every shard itself and yields no output, so Dagster would skip the report's step.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    DagsterInstance,
    DagsterInvalidDefinitionError,
    DagsterRun,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
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

from llm_infer_dagster.errors import LLMInferError, TaskConfigError
from llm_infer_dagster.orchestration.asset_keys import task_of
from llm_infer_dagster.orchestration.assets.factory import TaskAssets
from llm_infer_dagster.orchestration.assets.report import answers_keys, latest_answers_id, report_behind
from llm_infer_dagster.orchestration.registry import input_events, partitions_def_for, sync_manifest
from llm_infer_dagster.orchestration.run_health import mark_dead_runs_failed
from llm_infer_dagster.orchestration.settings import RunSettings
from llm_infer_dagster.orchestration.staleness import ChainVersions, stale_shards
from llm_infer_dagster.shards.manifest import ShardManifest
from llm_infer_dagster.shards.planning import RunPlan, plan_runs
from llm_infer_dagster.tasks.task_settings import DEFAULT_CRON, SETTINGS_FILE

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
    def new_shards(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        deployment = bundle.deployment
        try:
            reg, to_add = sync_manifest(context.instance, task, deployment.store(task.name),
                                        task.input_path(deployment.input_path))  # fmt: skip
        except LLMInferError as exc:  # the task's own mistake: one line in the tick, not a traceback a minute
            return SkipReason(f"cannot register shards of task {task.name}: {exc}")
        for note in reg.notes:
            context.log.warning(note)
        events: list[AssetObservation | AssetMaterialization] = []
        short = set(reg.short_keys)
        for kind, paths in (("shrunk", reg.shrunk_files), ("modified", reg.modified_files),
                            ("vanished", reg.vanished_files)):  # fmt: skip
            for path in paths:
                keys = [s.key for s in reg.manifest.shards.values() if s.file == path]
                if kind == "shrunk":
                    kept = [k for k in keys if k in short]
                    what = (f"{len(kept)} shard(s) past its new end keep their results and are not redone "
                            "(llm-infer --redo_shrunk redoes them); edited rows before it are stale")  # fmt: skip
                elif kind == "vanished":
                    what = "its shards keep their results and are skipped from now on"
                else:
                    what = "those of its shards whose rows changed are now stale"
                context.log.warning(f"input file {path} {kind}: {what} (shards {', '.join(keys)})")
                events.append(AssetObservation(
                    asset_key=bundle.key("raw"),
                    metadata={"input_change": kind, "file": path, "shards": ", ".join(keys),
                              "kept_shards": ", ".join(k for k in keys if k in short)},
                ))  # fmt: skip
        recorded = input_events(task, reg)
        if not to_add and not events and not recorded:
            return SkipReason(f"no new input ({reg.files_read} file(s) re-read)")
        grown = len(reg.observed) - len(reg.new_keys)
        what = f"registered {len(to_add)} new shard(s)" + (
            f", {grown} shard(s) with new rows (now stale)" if grown else ""
        )
        what += f" ({reg.files_read} file(s) read)"
        context.log.info(f"task {task.name}: {what}")
        # Dagster calls a tick without run requests "skipped"; its reason then says what this tick did.
        return SensorResult(
            dynamic_partitions_requests=[pdef.build_add_request(to_add)] if to_add else [],
            asset_events=[*events, *recorded],
            skip_reason=SkipReason(
                f"{what}; no run launched: materialize them with the {task.dagster_name}_missing_shards schedule "
                "or the asset graph's Materialize (missing)"
            ),
        )

    return new_shards


def _of_task(bundle: TaskAssets, *, report: bool = True) -> Callable[[DagsterRun], bool]:
    """Whether a run belongs to the task: its jobs, or a UI materialization / backfill of its assets.

    ``report=False`` leaves out runs of the report alone: they read answers and write no shard, so they must
    not hold back the shard work (the missing-shards schedule).
    """
    jobs = {bundle.job.name, *([bundle.report_job.name] if report else [])}
    name, report_key = bundle.task.dagster_name, bundle.report.key

    def of_task(r: DagsterRun) -> bool:
        selected = [k for k in r.asset_selection or () if task_of(k) == name]
        return r.job_name in jobs or any(k != report_key or report for k in selected)

    return of_task


def build_report_sensor(bundle: TaskAssets) -> SensorDefinition:
    """``<task>_report_refresh``: the report follows the answers, a run after the task's runs are done."""
    task = bundle.task
    answers = answers_keys(task)

    @sensor(
        name=f"{task.dagster_name}_report_refresh",
        job=bundle.report_job,
        minimum_interval_seconds=task.settings.sensor_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING if task.settings.schedule_enabled else DefaultSensorStatus.STOPPED,
        description=f"Materialize the report of task {task.name} once its answers changed and its runs are done.",
    )
    def report_refresh(context: SensorEvaluationContext) -> RunRequest | SkipReason:
        instance = context.instance
        of_task = _of_task(bundle)
        for run_id in mark_dead_runs_failed(instance, of_task):  # a SIGKILLed run stays STARTED for ever
            context.log.warning(f"run {run_id}: its process is gone; marked failed")
        active = [r for r in instance.get_runs(RunsFilter(statuses=ACTIVE)) if of_task(r)]
        if active:
            return SkipReason(f"run {active[0].run_id} of task {task.name} is still going")
        if not report_behind(instance, task, answers):
            return SkipReason("the report is up to date with every model's answers")
        newest = latest_answers_id(instance, answers)
        return RunRequest(run_key=f"answers-{newest}", tags={"llm_infer/launched_by": "sensor"})

    return report_refresh


def build_missing_shards_schedule(bundle: TaskAssets) -> ScheduleDefinition:
    """The task's ``<task>_missing_shards`` schedule; a cron string Dagster refuses is a TaskConfigError.

    ``task_settings.json`` checks only the cron string's shape; Dagster is the judge of the rest (a minute
    of 61, the 31st of February), and its refusal names the task's file and the ``schedule.cron`` key.
    """
    task = bundle.task

    def missing_shards(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
        instance = context.instance

        of_task = _of_task(bundle, report=False)
        # A run whose process was SIGKILLed stays STARTED for ever and would make every tick skip.
        for run_id in mark_dead_runs_failed(instance, of_task):
            context.log.warning(f"run {run_id}: its process is gone; marked failed")
        active = [r for r in instance.get_runs(RunsFilter(statuses=ACTIVE)) if of_task(r)]
        if active:
            return SkipReason(f"run {active[0].run_id} of task {task.name} is still going")
        manifest = ShardManifest.load(bundle.deployment.store(task.name))
        if manifest is None:
            return SkipReason("no shards registered yet (the new-shards sensor or llm-infer registers them)")
        order = instance.get_dynamic_partitions(partitions_def_for(task).name or "")
        keys = manifest.runnable(order)  # shards whose input shrank keep their results: not redone here
        graph = Definitions(assets=bundle.all_assets, resources={"settings": RunSettings()}).resolve_asset_graph()
        versions = ChainVersions(instance, graph, bundle.input.key, keys)
        # Prompts that are there and up to date (made for another model, or earlier) are not made again.
        done_prompts = instance.get_materialized_partitions(bundle.key("prompts"))
        stale_prep = versions.stale([bundle.key("raw"), bundle.key("prompts")])
        ready = done_prompts - stale_prep[bundle.key("raw")] - stale_prep[bundle.key("prompts")]
        requests = [
            RunRequest(
                run_key=f"{context.scheduled_execution_time}:{model or ''}:{p.first}..{p.last}:{len(selection)}",
                tags={**p.tags, "llm_infer/launched_by": "schedule", "llm_infer/model": model or "default"},
                asset_selection=selection,
            )
            for model in (None, *task.settings.models)  # the run's model, then each named model of the task
            for p, selection in _model_plans(bundle, model, instance, versions, keys, ready, order)
        ]
        return requests or SkipReason("every shard is answered and up to date, for every model")

    cron = task.settings.schedule_cron
    try:
        return schedule(
            name=f"{task.dagster_name}_missing_shards",
            cron_schedule=cron,
            job=bundle.job,
            default_status=(
                DefaultScheduleStatus.RUNNING if task.settings.schedule_enabled else DefaultScheduleStatus.STOPPED
            ),
            description=f"Materialize every shard of task {task.name} that has no answers yet or is stale.",
        )(missing_shards)
    except DagsterInvalidDefinitionError as exc:
        if "cron" not in str(exc).lower():
            raise
        dagster_says = " ".join(str(exc).split())
        raise TaskConfigError(
            f'{task.folder / SETTINGS_FILE}: "schedule.cron" "{cron}" is not a valid cron string for Dagster '
            f'({dagster_says}); use 5 fields, minute hour day month weekday, like "{DEFAULT_CRON}"'
        ) from None


def _model_plans(
    bundle: TaskAssets,
    model: str | None,
    instance: DagsterInstance,
    versions: ChainVersions,
    keys: list[str],
    ready: set[str],
    order: Sequence[str],
) -> list[tuple[RunPlan, list[AssetKey]]]:
    """The runs that bring one model's completions and answers up to date, with their asset selections.

    ``ready``: shards whose raw and prompts are materialized and fresh; a run over only those skips them.
    """
    comp, ans = bundle.model_key("completions", model), bundle.model_key("answers", model)
    done_comp, done_answers = instance.get_materialized_partitions(comp), instance.get_materialized_partitions(ans)
    chain = [bundle.key("raw"), bundle.key("prompts"), comp]
    stale_comp, stale_answers = stale_shards(versions, chain, ans, keys, done_comp, done_answers)
    plans = plan_runs(
        keys, done_comp, done_answers, stale_completions=stale_comp, stale_answers=stale_answers, order=order
    )
    prep = [bundle.key("raw"), bundle.key("prompts")]

    def selection(p: RunPlan) -> list[AssetKey]:
        if "completions" not in p.assets:
            return [ans]
        shards = order[order.index(p.first) : order.index(p.last) + 1]
        return [comp, ans] if ready.issuperset(shards) else [*prep, comp, ans]

    return [(p, selection(p)) for p in plans]
