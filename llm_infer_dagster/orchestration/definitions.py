"""The code location: one bundle of assets and jobs per task folder, wired to one settings resource.

Tasks come from ``LLM_INFER_TASK_CONFIGS`` (default: this repo's ``task_configs/``); ``LLM_INFER_TASKS``
(comma-separated) limits which are loaded, which is how ``llm-infer`` loads only the task it runs.
"""

from __future__ import annotations

import os

from dagster import Definitions

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.orchestration.assets.factory import TaskAssets, build_task_assets
from llm_infer_dagster.orchestration.gpu_executor import gpu_executor
from llm_infer_dagster.orchestration.sensors import build_missing_shards_schedule, build_shard_sensor
from llm_infer_dagster.orchestration.settings import InferenceSettings
from llm_infer_dagster.tasks.loader import TaskFiles, discover_tasks, load_task


def build_task_bundles(settings: InferenceSettings, only: list[str] | None = None) -> list[TaskAssets]:
    """Every task (or ``only`` these), loaded with the settings' task file and function names."""
    files = TaskFiles.from_settings(settings)  # the seed's --task_config_fn / --*_func: for every task here
    names = only if only else discover_tasks(settings.task_configs, files)
    tasks = [load_task(settings.task_configs, n, files) for n in names]
    seen: dict[str, str] = {}
    for t in tasks:
        if t.dagster_name in seen:
            raise TaskConfigError(
                f"tasks {seen[t.dagster_name]!r} and {t.name!r} in {settings.task_configs} both become Dagster name "
                f"{t.dagster_name!r}; rename one folder"
            )
        seen[t.dagster_name] = t.name
    return [build_task_assets(t, settings) for t in tasks]


def build_definitions() -> Definitions:
    settings = InferenceSettings.from_env()
    only = [t.strip() for t in os.environ.get("LLM_INFER_TASKS", "").split(",") if t.strip()]
    bundles = build_task_bundles(settings, only or None)
    return Definitions(
        assets=[a for b in bundles for a in b.all_assets],
        jobs=[j for b in bundles for j in (b.job, b.register_job)],
        sensors=[build_shard_sensor(b) for b in bundles],
        schedules=[build_missing_shards_schedule(b) for b in bundles],
        resources={"settings": settings},
        executor=gpu_executor,  # also for `dagster asset materialize` and the UI's materialize buttons
    )
