"""``build_task_assets(task)``: one task's partitioned assets raw -> prompts -> completions -> answers.

The four assets (two more per named model) are one ``multi_asset`` that can be subset: a run over a range of
shards is one step, in which ``ShardPipeline`` streams each shard through every selected asset and records it
the moment it lands (so "materialize all" starts the model once, the engine never waits for prompts, and
answers appear as completions do). Shards are Parquet files in the :class:`TaskStore`, not IO-manager outputs.
"""

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AssetSpec,
    BackfillPolicy,
    BetaWarning,
    Config,
    Failure,
    JobDefinition,
    OpExecutionContext,
    define_asset_job,
    in_process_executor,
    job,
    multi_asset,
    op,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from llm_infer_dagster.engines.hf_sampling import check_hf_supported
from llm_infer_dagster.engines.spec import EngineSpec
from llm_infer_dagster.orchestration.assets.pipeline import ModelTarget, ShardPipeline
from llm_infer_dagster.orchestration.gpu_executor import GPU_TAG, gpu_executor
from llm_infer_dagster.orchestration.registry import input_key, partitions_def_for, register_shards
from llm_infer_dagster.orchestration.settings import InferenceSettings, check_engine_settings
from llm_infer_dagster.tasks.loader import TaskConfig, TaskFiles
from llm_infer_dagster.tasks.task_settings import ModelChoice
from llm_infer_dagster.tasks.versions import task_code_versions


@dataclass
class TaskAssets:
    """What :func:`build_task_assets` gives ``definitions.py`` to wire."""

    task: TaskConfig
    input: AssetSpec
    assets: list[AssetsDefinition]
    job: UnresolvedAssetJobDefinition
    register_job: JobDefinition

    def key(self, asset_name: str) -> AssetKey:
        return AssetKey([self.task.dagster_name, asset_name])

    def model_key(self, asset_name: str, model: str | None) -> AssetKey:
        """completions/answers of the run's model (``None``) or of a named model of the task."""
        return self.key(asset_name) if model is None else AssetKey([self.task.dagster_name, model, asset_name])

    @property
    def all_assets(self) -> list[AssetsDefinition | AssetSpec]:
        """What a ``Definitions`` needs: the observed input, then the materializable assets."""
        return [self.input, *self.assets]


def engine_spec(settings: InferenceSettings, choice: ModelChoice | None = None) -> EngineSpec:
    """The run's engine, or a task's named model with the run's settings filling what it leaves unset."""
    c = choice or ModelChoice(model_path=settings.model_path or "")
    spec = EngineSpec(
        model_type=c.model_type or settings.model_type,
        model_path=c.model_path,
        device="cpu" if settings.use_cpu else "cuda",
        dtype=c.dtype or settings.dtype,
        max_model_len=c.max_model_len or settings.max_model_len,
        trust_remote_code=settings.trust_remote_code,
        batch_size=settings.batch_size,
        tensor_parallel_size=settings.tensor_parallel_size,
        engine_args=c.model_args if c.model_args is not None else settings.engine_args,
        max_input_length=settings.max_input_length,
    )
    check_engine_settings(
        model_path=spec.model_path or None, model_type=spec.model_type, use_cpu=settings.use_cpu, dtype=spec.dtype,
        workers=settings.workers, tensor_parallel_size=spec.tensor_parallel_size,
        trust_remote_code=spec.trust_remote_code, engine_args=spec.engine_args,
    )  # fmt: skip
    return spec


def code_versions(task: TaskConfig, settings: InferenceSettings) -> dict[str | None, dict[str, str]]:
    """Each asset's code version, for the run's model (``None``) and each named model of the task."""
    models: dict[str | None, ModelChoice] = {None: ModelChoice(model_path=settings.model_path or "")}
    models.update(task.settings.models)
    return {
        model: task_code_versions(
            task.module,
            task.folder,
            task.sampling_params,
            model_type=c.model_type or settings.model_type,
            model_path=c.model_path,
            dtype=c.dtype or settings.dtype,
            max_model_len=c.max_model_len or settings.max_model_len,
            limit=settings.limit,
            functions=task.files.functions,
            max_input_length=settings.max_input_length,
        )  # fmt: skip
        for model, c in models.items()
    }


def check_run_matches_task_files(task: TaskConfig, settings: InferenceSettings) -> None:
    """Refuse a run whose settings name other task files or functions than the task was loaded with.

    The task module and its code versions come from the code location's load; a Launchpad run that changed
    ``format_prompt_func`` would otherwise run the old function and record it as the new one.
    """
    files = TaskFiles.from_settings(settings)
    if files != task.files:
        raise Failure(
            f"this run's settings name task file {files.task_config_fn!r} / functions "
            f"{', '.join(files.functions.values())}, but task {task.name} was loaded with "
            f"{task.files.task_config_fn!r} / {', '.join(task.files.functions.values())}. Set them as "
            "LLM_INFER_* variables and reload the code location (or use llm-infer)"
        )


def check_run_matches_code_version(
    task: TaskConfig,
    settings: InferenceSettings,
    loaded: dict[str | None, dict[str, str]],
    model: str | None,
    asset: str,
) -> None:
    """Refuse a run whose settings would make results under another code version than the asset carries.

    Code versions are fixed when the code location loads (from the ``LLM_INFER_*`` defaults). A run that
    changed the model, dtype, context length or limit in its run config (the Launchpad) would otherwise be
    recorded as made by the loaded settings, and Dagster would call those shards fresh.
    """
    if code_versions(task, settings)[model][asset] != loaded[model][asset]:
        raise Failure(
            f"this run's settings (model_path={settings.model_path!r}, model_type={settings.model_type!r}, "
            f"dtype={settings.dtype!r}, max_model_len={settings.max_model_len}, limit={settings.limit}, "
            f"max_input_length={settings.max_input_length}) differ "
            f"from those the code location was loaded with, and they change what {task.name}/{asset} holds. "
            "Set them as LLM_INFER_* variables and reload the code location (or use llm-infer), or list another "
            "model under `models` in the task's task_settings.json"
        )


def build_task_assets(task: TaskConfig, settings: InferenceSettings | None = None) -> TaskAssets:
    """The four assets, the task job and the shard-registration job of one task.

    ``settings`` (default: from the environment) name the model whose identity goes into the completions
    asset's code version.
    """
    versions = code_versions(task, settings or InferenceSettings.from_env())
    # single_run backfills are what make "materialize all" load the model once; Dagster marks them beta.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return _build_task_assets(task, versions)


def _build_task_assets(task: TaskConfig, all_versions: dict[str | None, dict[str, str]]) -> TaskAssets:
    versions = all_versions[None]
    name = task.dagster_name
    pdef = partitions_def_for(task)
    common = dict(partitions_def=pdef, group_name=name, skippable=True, kinds={"parquet"})
    raw_key, prompts_key = AssetKey([name, "raw"]), AssetKey([name, "prompts"])
    input_spec = AssetSpec(
        key=input_key(task),
        partitions_def=pdef,
        group_name=name,
        kinds={"file"},
        description=(
            f"The input rows of task {task.name}, observed per shard when shards are registered (sensor, "
            "llm-infer, register job). Its data version is a digest of the shard's rows: a shard whose rows "
            "grew or changed shows raw (and so the shard) stale."
        ),
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
        comp_key = AssetKey([name, "completions"] if model is None else [name, model, "completions"])
        answers_key = AssetKey([name, "answers"] if model is None else [name, model, "answers"])
        models[model] = (comp_key, answers_key)
        about = f"Completions of model {model!r} (from the task's task_settings.json). " if model else ""
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
        can_subset=True,
        backfill_policy=BackfillPolicy.single_run(),
        op_tags={GPU_TAG: "settings"},  # the executor leases workers x tensor_parallel_size GPUs (0 without a model)
        description=f"Task {task.name}, shard by shard: raw -> prompts -> completions -> answers in one step.",
    )
    def shards(context: AssetExecutionContext, settings: InferenceSettings) -> Iterator[Any]:
        check_run_matches_task_files(task, settings)
        selected = context.selected_asset_keys
        targets = []
        for model, (comp_key, answers_key) in models.items():
            make_comp, make_ans = comp_key in selected, answers_key in selected
            if not (make_comp or make_ans):
                continue
            if make_comp:
                check_run_matches_code_version(task, settings, all_versions, model, "completions")
            spec = engine_spec(settings, task.settings.models.get(model) if model else None) if make_comp else None
            if spec is not None and spec.model_type == "hf":
                check_hf_supported(task.sampling_params)
            targets.append(ModelTarget(model, comp_key, answers_key, all_versions[model], spec, make_comp, make_ans))
        if raw_key in selected:
            check_run_matches_code_version(task, settings, all_versions, None, "raw")  # --limit is in raw's version
        ShardPipeline(
            context, task, settings,
            keys={"input": input_spec.key, "raw": raw_key, "prompts": prompts_key},
            versions=versions, targets=targets, make_raw=raw_key in selected, make_prompts=prompts_key in selected,
        ).run()  # fmt: skip
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
    def register_op(context: OpExecutionContext, config: RegisterConfig, settings: InferenceSettings) -> None:
        reg = register_shards(
            context.instance,
            task,
            settings.store(task.name),
            task.input_path(settings.input_path),
            shard_size=config.shard_size,
            tasks=config.tasks,
        )
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

    return TaskAssets(task=task, input=input_spec, assets=[shards], job=task_job, register_job=register_job)
