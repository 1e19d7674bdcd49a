"""A task's asset keys, built and read back in one place (as dagster-dbt's translator owns dbt's keys).

``[<task>, input|raw|prompts|completions|answers|report]`` for the task and its default model, and
``[<task>, <model>, completions|answers]`` for each named model of its ``task_settings.json``. ``<task>`` is
the task's Dagster name (:attr:`TaskConfig.dagster_name`), also its group and its jobs' prefix.
"""

from __future__ import annotations

from dagster import AssetKey

INPUT, RAW, PROMPTS, COMPLETIONS, ANSWERS, REPORT = "input", "raw", "prompts", "completions", "answers", "report"
#: The assets every shard goes through, in order (the model's pair once per model).
CHAIN = (RAW, PROMPTS, COMPLETIONS, ANSWERS)


def task_key(task: str, asset: str, model: str | None = None) -> AssetKey:
    """``[task, asset]``, or ``[task, model, asset]`` for a named model's completions and answers."""
    return AssetKey([task, asset] if model is None else [task, model, asset])


def model_keys(task: str, model: str | None = None) -> tuple[AssetKey, AssetKey]:
    """(completions, answers) of the default model (``None``) or of a named model."""
    return task_key(task, COMPLETIONS, model), task_key(task, ANSWERS, model)


def asset_of(key: AssetKey) -> str:
    """Which asset of its task a key is: ``completions`` for ``[qa, completions]`` and ``[qa, qwen, completions]``."""
    return key.path[-1]


def task_of(key: AssetKey) -> str:
    """The task (Dagster name) a key belongs to."""
    return key.path[0]


def model_of(key: AssetKey) -> str | None:
    """The named model of a completions/answers key; None for the default model and the shared assets."""
    return key.path[1] if len(key.path) == 3 else None
