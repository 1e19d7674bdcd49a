"""``build_task_assets(task)``: one task's partitioned assets raw -> prompts -> completions -> answers.

The four assets (two more per named model) are one ``multi_asset`` that can be subset: a run over a range of
shards is one step, in which ``ShardStream`` (``pipeline/stream.py``) streams each shard through every selected
asset and the step records it the moment it lands (so "materialize all" starts the model once, the engine never
waits for prompts, and answers appear as completions do). Shards are Parquet files in the :class:`TaskStore`, not
IO-manager outputs.
"""

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypedDict

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AssetSpec,
    BackfillPolicy,
    BetaWarning,
    Config,
    DynamicPartitionsDefinition,
    JobDefinition,
    OpExecutionContext,
    define_asset_job,
    in_process_executor,
    job,
    multi_asset,
    op,
)

from llm_infer_dagster.deployment import Deployment, claim_output
from llm_infer_dagster.engines.hf_sampling import check_hf_supported
from llm_infer_dagster.engines.pooling import check_pooling_model
from llm_infer_dagster.engines.preflight import check_engine_settings
from llm_infer_dagster.engines.spec import EngineSpec
from llm_infer_dagster.orchestration.asset_keys import PROMPTS, RAW, model_keys, task_key
from llm_infer_dagster.orchestration.assets.checks import check_specs
from llm_infer_dagster.orchestration.assets.metadata import shard_table
from llm_infer_dagster.orchestration.assets.pipeline import run_step
from llm_infer_dagster.orchestration.assets.report import build_report_asset, report_key
from llm_infer_dagster.orchestration.dagster_internals.gpu_executor import GPU_TAG, RUN_DEFAULTS_TAG, gpu_executor
from llm_infer_dagster.orchestration.dagster_internals.private import UnresolvedAssetJobDefinition
from llm_infer_dagster.orchestration.registry import input_key, partitions_def_for, register_shards
from llm_infer_dagster.orchestration.settings import RunSettings
from llm_infer_dagster.pipeline.stream import ModelTarget
from llm_infer_dagster.shards.manifest import ShardManifest
from llm_infer_dagster.tasks.loader import TaskConfig
from llm_infer_dagster.tasks.task_settings import SETTINGS_FILE, ModelChoice
from llm_infer_dagster.tasks.versions import task_code_versions


@dataclass
class TaskAssets:
    """What :func:`build_task_assets` gives ``definitions.py`` to wire."""

    task: TaskConfig
    deployment: Deployment
    input: AssetSpec
    assets: list[AssetsDefinition]
    job: UnresolvedAssetJobDefinition
    register_job: JobDefinition
    report: AssetsDefinition  # [<task>, report]: every model side by side (unpartitioned)
    report_job: UnresolvedAssetJobDefinition

    def key(self, asset_name: str) -> AssetKey:
        return task_key(self.task.dagster_name, asset_name)

    def model_key(self, asset_name: str, model: str | None) -> AssetKey:
        """completions/answers of the run's model (``None``) or of a named model of the task."""
        return task_key(self.task.dagster_name, asset_name, model)

    @property
    def all_assets(self) -> list[AssetsDefinition | AssetSpec]:
        """What a ``Definitions`` needs: the observed input, then the materializable assets, then the report."""
        return [self.input, *self.assets, self.report]


class _ShardSpecArgs(TypedDict):
    """The ``AssetSpec`` arguments every shard asset of a task shares."""

    partitions_def: DynamicPartitionsDefinition
    group_name: str
    skippable: bool
    kinds: set[str]


def engine_spec(
    deployment: Deployment, run: RunSettings, choice: ModelChoice | None = None, task: TaskConfig | None = None
) -> EngineSpec:
    """The engine of a declared model (the default one for ``None``), run as fast as the run's settings say;
    ``task``'s kind (task_settings' ``"task"``) picks a generating or a pooling engine."""
    c = deployment.resolve(choice)
    kind = task.settings.task if task is not None else "generate"
    spec = EngineSpec(
        model_type=c.model_type or deployment.model_type,
        model_path=c.model_path,
        device="cpu" if run.use_cpu else "cuda",
        dtype=c.dtype or deployment.dtype,
        max_model_len=c.max_model_len,
        trust_remote_code=deployment.trust_remote_code,
        batch_size=run.batch_size,
        tensor_parallel_size=run.tensor_parallel_size,
        engine_args={**(c.model_args or {}), **run.engine_args},
        max_input_length=deployment.max_input_length,
        task=kind,
    )
    if task is not None:
        check_pooling_model(kind, spec.model_path, where=f'{task.folder / SETTINGS_FILE}: "task"')
    check_engine_settings(
        model_path=spec.model_path or None, model_type=spec.model_type, use_cpu=run.use_cpu, dtype=spec.dtype,
        workers=run.workers, tensor_parallel_size=spec.tensor_parallel_size,
        trust_remote_code=spec.trust_remote_code, engine_args=spec.engine_args,
    )  # fmt: skip
    return spec


def code_versions(task: TaskConfig, deployment: Deployment) -> dict[str | None, dict[str, str]]:
    """Each asset's code version, for the default model (``None``) and each named model of the task."""
    models: list[tuple[str | None, ModelChoice | None]] = [(None, None), *task.settings.models.items()]
    out: dict[str | None, dict[str, str]] = {}
    for model, choice in models:
        c = deployment.resolve(choice)
        out[model] = task_code_versions(
            task.module, task.folder, task.sampling_params,
            model_type=c.model_type or deployment.model_type, model_path=c.model_path,
            dtype=c.dtype or deployment.dtype, max_model_len=c.max_model_len, limit=deployment.limit,
            functions=task.files.functions, max_input_length=deployment.max_input_length,
            adapter_path=c.adapter_path, task=task.settings.task,
        )  # fmt: skip
    return out


def build_task_assets(task: TaskConfig, deployment: Deployment | None = None) -> TaskAssets:
    """The four assets (two more per named model), the task job and the shard-registration job of one task.

    ``deployment`` (default: from the environment) declares the models whose identity goes into the
    completions assets' code versions; a run only says how fast to make them.
    """
    deployment = deployment or Deployment.from_env()
    versions = code_versions(task, deployment)
    # single_run backfills are what make "materialize all" load the model once; Dagster marks them beta.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return _build_task_assets(task, deployment, versions)


def _build_task_assets(
    task: TaskConfig, deployment: Deployment, all_versions: dict[str | None, dict[str, str]]
) -> TaskAssets:
    versions = all_versions[None]
    name = task.dagster_name
    pdef = partitions_def_for(task)
    common = _ShardSpecArgs(partitions_def=pdef, group_name=name, skippable=True, kinds={"parquet"})
    raw_key, prompts_key = task_key(name, RAW), task_key(name, PROMPTS)
    store = deployment.store(task.name)
    input_spec = AssetSpec(
        key=input_key(task),
        partitions_def=pdef,
        group_name=name,
        kinds={"file"},
        description=(
            f"The input rows of task {task.name}, made outside Dagster: each shard is recorded when it is "
            "registered or its rows change (sensor, llm-infer, register job), as a materialization (Materialized "
            "here means the shard's rows are there) and an observation whose data version is a digest of the "
            "shard's rows: a shard whose rows "
            "grew or changed shows raw (and so the shard) stale. Its metadata holds the shard -> file and row "
            "range table as of the code location's load (each shard's observation has its own)."
        ),
        metadata=shard_table(ShardManifest.load(store), str(store.manifest_path)),
    )
    specs = [
        AssetSpec(
            raw_key, deps=[input_spec.key], code_version=versions["raw"], **common,
            description=f"Rows of task {task.name}: read_file over its shard's row range, with stable record ids.",
        ),
        AssetSpec(
            prompts_key, deps=[raw_key], code_version=versions["prompts"], **common,
            description="format_prompt per row; a row whose format_prompt raises keeps its error.",
        ),
    ]  # fmt: skip
    models: dict[str | None, tuple[AssetKey, AssetKey]] = {}
    for model, model_versions in all_versions.items():
        comp_key, answers_key = model_keys(name, model)
        models[model] = (comp_key, answers_key)
        declared = deployment.resolve(task.settings.models.get(model) if model else None)
        about = (
            f"Completions of LoRA adapter {model!r} ({declared.adapter_path}) on {declared.model_type} "
            f"{declared.model_path}, from the task's task_settings.json. "
            if model and declared.adapter_path
            else f"Completions of model {model!r} ({declared.model_type} {declared.model_path}, from the task's "
            "task_settings.json). "
            if model
            else f"Completions of the deployment's default model ({declared.model_type} "
            f"{declared.model_path or 'none declared: set LLM_INFER_MODEL_PATH'}). "
        )
        specs += [
            AssetSpec(
                comp_key, deps=[prompts_key], code_version=model_versions["completions"], **common,
                description=about + "The model's completions: every sample, finish reasons, token counts, model "
                "and sampling parameters. One engine load per run; each shard is recorded as it lands.",
            ),
            AssetSpec(
                answers_key, deps=[comp_key], code_version=model_versions["answers"], **common,
                description="extract_answer on each first sample, as soon as a shard's completions land. "
                "Never runs the model.",
            ),
        ]  # fmt: skip

    @multi_asset(
        name=f"{name}__shards",
        specs=specs,
        check_specs=check_specs(task.settings.checks, models, pdef),  # per-shard quality checks
        can_subset=True,
        backfill_policy=BackfillPolicy.single_run(),
        # the executor leases workers x tensor_parallel_size GPUs (0 without a model, or on the deployment's CPU)
        op_tags={
            GPU_TAG: "settings",
            **({RUN_DEFAULTS_TAG: json.dumps(deployment.run_defaults)} if deployment.run_defaults else {}),
        },  # fmt: skip
        description=f"Task {task.name}, shard by shard: raw -> prompts -> completions -> answers in one step.",
    )
    def shards(context: AssetExecutionContext, settings: RunSettings) -> Iterator[Any]:
        claim_output(deployment, task.name)  # refused if another deployment made this output folder
        if deployment.run_defaults:  # the run's own settings over the deployment's defaults
            settings = RunSettings.from_run_config(context.run.run_config, deployment.run_defaults)
        selected = context.selected_asset_keys
        targets = []
        for model, (comp_key, answers_key) in models.items():
            make_comp, make_ans = comp_key in selected, answers_key in selected
            if not (make_comp or make_ans):
                continue
            choice = task.settings.models.get(model) if model else None
            spec = engine_spec(deployment, settings, choice, task) if make_comp else None
            if spec is not None and spec.model_type == "hf" and spec.task == "generate":
                check_hf_supported(task.sampling_params)
            adapter = choice.adapter_path if choice else None  # a LoRA adapter runs on its base's engine
            targets.append(ModelTarget(model, all_versions[model], spec, make_comp, make_ans, adapter))
        run_step(
            context, task, deployment, settings, versions=versions, targets=targets,
            make_raw=raw_key in selected, make_prompts=prompts_key in selected,
        )  # fmt: skip
        yield from ()  # every shard was recorded as it landed: no outputs at step end

    task_job = define_asset_job(
        f"{name}_job",
        selection=AssetSelection.assets(shards),
        executor_def=gpu_executor,
        description=f"raw -> prompts -> completions -> answers for task {task.name} (and its named models)",
    )

    class RegisterConfig(Config):
        shard_size: int | None = None
        tasks: int | None = None

    @op(name=f"{name}_register_shards_op")
    def register_op(context: OpExecutionContext, config: RegisterConfig) -> None:
        claim_output(deployment, task.name)
        reg = register_shards(
            context.instance,
            task,
            deployment.store(task.name),
            task.input_path(deployment.input_path),
            shard_size=config.shard_size or deployment.shard_size,
            tasks=config.tasks,
        )
        for note in reg.notes:
            context.log.warning(note)
        context.log.info(
            f"{len(reg.manifest.shards)} shards ({len(reg.new_keys)} new), "
            f"{reg.files_read} file(s) read, shard size {reg.manifest.shard_size}"
        )

    @job(
        name=f"{name}_register_shards",
        executor_def=in_process_executor,
        description=f"Read task {task.name}'s input files and register their shards as partitions.",
    )
    def register_job() -> None:
        register_op()

    report = build_report_asset(task, deployment, models)
    report_job = define_asset_job(
        f"{name}_report",
        selection=[report_key(task)],
        executor_def=in_process_executor,  # reads Parquet and the event log; no model, no GPU
        description=f"The report of task {task.name}: every model's answers side by side (runs no model).",
    )
    return TaskAssets(
        task=task, deployment=deployment, input=input_spec, assets=[shards], job=task_job, register_job=register_job,
        report=report, report_job=report_job,
    )  # fmt: skip
