"""One deployment's definitions: one bundle of assets and jobs per task folder, wired to the run settings.

:func:`build_definitions` takes a :class:`~llm_infer_dagster.deployment.Deployment` (the task-configs folder,
which tasks, their file names and the declared model) and reads nothing else; ``llm_infer_dagster.definitions``
(the code location), ``llm-infer``, ``llm_task_definitions`` and the ``LLMInferComponent`` all come here.
"""

from __future__ import annotations

from dagster import Definitions

from llm_infer_dagster.deployment import Deployment
from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.orchestration.assets.factory import TaskAssets, build_task_assets
from llm_infer_dagster.orchestration.broken_tasks import BrokenTask, broken_tasks_definitions, load_tasks_contained
from llm_infer_dagster.orchestration.dagster_internals.gpu_executor import gpu_executor
from llm_infer_dagster.orchestration.sensors import (
    build_missing_shards_schedule,
    build_report_sensor,
    build_shard_sensor,
)
from llm_infer_dagster.orchestration.settings import RESOURCE_KEY, shared_run_settings
from llm_infer_dagster.tasks.loader import TaskConfig, TaskFiles, discover_tasks, load_task


def build_task_bundles_contained(
    deployment: Deployment, only: list[str] | None = None
) -> tuple[list[TaskAssets], list[BrokenTask]]:
    """Every task that loads, and the folders that do not (each shown in Dagster with its one-line error)."""
    files = TaskFiles.from_settings(deployment)  # the seed's --task_config_fn / --*_func: for every task here
    names = only if only else discover_tasks(deployment.task_configs, files)
    bundles, broken = load_tasks_contained(
        deployment.task_configs,
        names,
        lambda n: build_task_assets(
            load_task(deployment.task_configs, n, files).with_kind(deployment.task_kind), deployment
        ),
    )
    seen: dict[str, str] = {}
    kept: list[TaskAssets] = []
    for b in bundles:
        t = b.task
        if t.dagster_name in seen:
            why = (
                f"tasks {seen[t.dagster_name]!r} and {t.name!r} in {deployment.task_configs} both become Dagster "
                f"name {t.dagster_name!r}; rename one folder"
            )
            broken.append(BrokenTask(t.name, t.folder, why))
            continue
        seen[t.dagster_name] = t.name
        kept.append(b)
    return kept, broken


def _load(deployment: Deployment, name: str, files: TaskFiles) -> TaskConfig:
    """The task, doing what the deployment says per row where it says (the Component's ``task`` attribute)."""
    return load_task(deployment.task_configs, name, files).with_kind(deployment.task_kind)


def build_task_bundles(deployment: Deployment, only: list[str] | None = None) -> list[TaskAssets]:
    """Every task (or ``only`` these); the first broken one raises its TaskConfigError."""
    bundles, broken = build_task_bundles_contained(deployment, only)
    if broken:
        raise TaskConfigError(broken[0].error)
    return bundles


def build_definitions(deployment: Deployment | None = None) -> Definitions:
    """One bundle per good task; a broken task folder is a placeholder asset with a failing check, not a crash.

    ``deployment`` defaults to :meth:`Deployment.load` (the recorded one, else ``LLM_INFER_*``).
    """
    deployment = deployment or Deployment.load()
    bundles, broken = build_task_bundles_contained(deployment, deployment.only_tasks or None)
    placeholders = broken_tasks_definitions(broken, taken={b.task.dagster_name for b in bundles})
    return Definitions(
        assets=[*(a for b in bundles for a in b.all_assets), *placeholders.assets],
        asset_checks=placeholders.asset_checks,
        jobs=[j for b in bundles for j in (b.job, b.register_job, b.report_job)],
        sensors=[s for b in bundles for s in (build_shard_sensor(b), build_report_sensor(b))],
        schedules=[build_missing_shards_schedule(b) for b in bundles],
        resources={RESOURCE_KEY: shared_run_settings()},  # one object: Components' definitions merge
        executor=gpu_executor,  # also for `dagster asset materialize` and the UI's materialize buttons
    )
