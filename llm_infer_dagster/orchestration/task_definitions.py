"""``llm_task_definitions``: one task folder as Dagster definitions, for a user's own Dagster project.

The Python seam, in the spirit of ``@dbt_assets``/``DbtProject``: a project that has its own assets, resources
and schedules adds an llm-infer task with one call and merges the result into its ``Definitions``. The
``LLMInferComponent`` (``component.py``) is this function behind a ``defs.yaml``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import Definitions

from llm_infer_dagster.deployment import Deployment
from llm_infer_dagster.models.gguf import convert_hint, find_gguf
from llm_infer_dagster.orchestration.broken_tasks import BrokenTask, broken_tasks_definitions
from llm_infer_dagster.orchestration.definitions import build_definitions
from llm_infer_dagster.orchestration.settings import RunSettings
from llm_infer_dagster.tasks.task_settings import ModelChoice, TaskKind

#: The run settings a model declaration may carry beside the model itself (defaults of this task's runs).
MODEL_RUN_SETTINGS = ("use_cpu", "tensor_parallel_size", "workers", "batch_size")


def llm_task_definitions(
    task_folder: str | os.PathLike[str],
    *,
    task_name: str | None = None,
    task: TaskKind | None = None,
    output_path: str | os.PathLike[str],
    model: ModelChoice | Mapping[str, Any] | None = None,
    input_path: str | None = None,
    shard_size: int | None = None,
    limit: int | None = None,
    max_input_length: int | None = None,
    trust_remote_code: bool = False,
    run_defaults: Mapping[str, Any] | None = None,
    source: str = "llm_task_definitions()",
) -> Definitions:
    """One llm-infer task folder as partitioned assets, checks, jobs, a sensor and a schedule.

    Args:
        task_folder: A task folder written for llm-infer (``task_config.py`` with ``get_file_list``,
            ``read_file``, ``format_prompt``, ``extract_answer``; optional ``sampling_params.json`` and
            ``task_settings.json``), or a folder holding only ``requests.jsonl`` or ``task.yaml`` (or a
            ``defs.yaml`` with the task inline). Its parent may hold a ``default_sampling_params.json``.
        task_name: The task's name when it is not the folder's (an inline task's ``name`` attribute).
        task: What the model does per row: ``generate`` text, or ``embed`` / ``classify`` / ``reward`` (a pooling
            task); over the folder's ``task_settings.json`` ``"task"`` (default: the folder's, else generate).
        output_path: Where shards, the seed's ``results/`` layout and the recorded deployment
            (``llm-infer.yaml``) go: a local folder or an fsspec URL (``s3://bucket/prefix``).
        model: The task's default model: ``model_path`` (a local model folder) and optionally ``model_type``
            (``vllm`` | ``hf``), ``dtype``, ``max_model_len``; and run defaults ``use_cpu``,
            ``tensor_parallel_size``, ``workers``, ``batch_size``, ``model_args`` (vLLM engine arguments) that
            any run may override. Named models beside it are declared in the task's ``task_settings.json``.
        input_path: Passed to the task's ``get_file_list`` (default: the task's own).
        shard_size: Rows per shard when new input is registered (default 512).
        limit: Keep the first N rows of each shard (debugging; part of what a shard holds).
        max_input_length: Prompt tokens allowed per row (longer rows become error rows).
        trust_remote_code: Run code shipped in the model folder (off by default).
        run_defaults: More run defaults (any :class:`~llm_infer_dagster.orchestration.settings.RunSettings`
            field), under the model's.
        source: Who declares this deployment, named in messages (the Component passes its ``defs.yaml``).

    Returns:
        A ``Definitions`` with the task's assets (``[<task>, raw|prompts|completions|answers|report]``), its
        checks, the ``<task>_job``, ``<task>_register_shards`` and ``<task>_report`` jobs, the new-shards sensor,
        the missing-shards schedule, the ``settings`` resource and the GPU-aware executor. Merge it with
        ``Definitions.merge`` (several tasks merge: they share one resource object and one executor). A task
        folder or model folder that is missing becomes a placeholder asset whose failing check says why, so the
        rest of the project still loads.

    The first shard written records this deployment in ``<output_path>/llm-infer.yaml``; a later ``llm-infer``
    run, ``llm-infer ui --output_path <output_path>`` or another declaration over the same folder reads it back,
    and one that disagrees about the model or task is refused, naming both.

    Example::

        import dagster as dg
        from llm_infer_dagster import llm_task_definitions

        defs = dg.Definitions.merge(
            my_other_defs,
            llm_task_definitions(
                "tasks/arith_qa",
                output_path="/data/out",
                model={"model_path": "/models/qwen", "model_type": "vllm"},
            ),
        )
    """
    folder = Path(task_folder).resolve()
    fields = dict(model.model_dump(exclude_none=True) if isinstance(model, ModelChoice) else (model or {}))
    runs = {**(run_defaults or {}), **{k: fields.pop(k) for k in MODEL_RUN_SETTINGS if k in fields}}
    if "model_args" in fields:  # engine tuning: how fast, never what a shard holds
        import json

        runs["model_args"] = json.dumps(fields.pop("model_args"))
    RunSettings.from_env(**runs)  # a bad run default fails here, naming the field
    deployment = Deployment.from_env(
        task_configs=str(folder.parent),
        tasks=task_name or folder.name,
        task_kind=task,
        output_dir=str(output_path),
        input_path=input_path,
        shard_size=shard_size,
        limit=limit,
        max_input_length=max_input_length,
        trust_remote_code=trust_remote_code,
        model_path=fields.pop("model_path", None),
        model_type=fields.pop("model_type", "vllm"),
        dtype=fields.pop("dtype", "auto"),
        max_model_len=fields.pop("max_model_len", None),
        run_defaults=runs,
        source=source,
    )
    broken = missing_folders(deployment, folder, source)
    if broken:  # only the placeholder: nothing of the task loads
        placeholder = broken_tasks_definitions([broken])
        return Definitions(assets=placeholder.assets, asset_checks=placeholder.asset_checks)
    return build_definitions(deployment)


def missing_folders(deployment: Deployment, folder: Path, source: str) -> BrokenTask | None:
    """A task folder that does not exist, or a model folder without ``config.json``: a BrokenTask naming
    ``source`` and the attribute, checked before the task's code runs."""
    if not folder.is_dir():
        return BrokenTask(
            folder.name, folder, f"{source}: task_folder {str(folder)!r} does not exist; point task_folder at a "
            "task folder (relative paths are relative to the file that declares it)"
        )  # fmt: skip
    model = deployment.model_path
    if model and (gguf_file := find_gguf(model)) is not None:
        return BrokenTask(folder.name, folder, f"{source}: model.model_path: {convert_hint(gguf_file)}")
    if model and Path(model).is_dir() and not (Path(model) / "config.json").is_file():
        return BrokenTask(
            folder.name, folder, f"{source}: model.model_path {model!r} holds no config.json; point it at a Hugging "
            "Face model folder (the one save_pretrained writes)"
        )  # fmt: skip
    if model and Path(model).is_absolute() and not Path(model).exists():
        return BrokenTask(
            folder.name, folder, f"{source}: model.model_path {model!r} does not exist; point it at a local model "
            "folder"
        )  # fmt: skip
    return None
