"""``build_task_assets(task)``: the four partitioned assets of one task, raw -> prompts -> completions -> answers.

Every asset handles one shard or a range of shards in one step (``BackfillPolicy.single_run``), so
"materialize all" starts the model once. Shards are Parquet files in the :class:`TaskStore`; assets read
their parent's shards from there (``deps``), not through an IO manager, so a step can write and record each
shard the moment it is done. ``completions`` logs an ``AssetMaterialization`` per shard as it lands: a killed
run keeps every shard it finished.
"""

import json
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetsDefinition,
    AssetSelection,
    AssetSpec,
    BackfillPolicy,
    BetaWarning,
    Config,
    Failure,
    JobDefinition,
    MaterializeResult,
    OpExecutionContext,
    asset,
    define_asset_job,
    in_process_executor,
    job,
    op,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from llm_infer_dagster.assets.metadata import error_summary, preview
from llm_infer_dagster.assets.provenance import provenance_tags
from llm_infer_dagster.engines.spec import EngineSpec, has_chat_template
from llm_infer_dagster.executor.gpu_executor import GPU_TAG, gpu_executor
from llm_infer_dagster.exports import export_shard
from llm_infer_dagster.registry import input_key, manifest_for, partitions_def_for, register_shards
from llm_infer_dagster.settings import InferenceSettings, check_engine_settings
from llm_infer_dagster.tasks.loader import TaskConfig, to_json
from llm_infer_dagster.tasks.sampling import check_hf_supported
from llm_infer_dagster.tasks.task_settings import ModelChoice
from llm_infer_dagster.tasks.versions import task_code_versions
from llm_infer_dagster.workers.gpus import split_gpus, visible_gpu_ids
from llm_infer_dagster.workers.pool import ShardJob, WorkerPool

RAW_SCHEMA = {"record_id": pl.String, "file": pl.String, "index": pl.Int64, "data": pl.String}
PROMPT_SCHEMA = {"record_id": pl.String, "prompt": pl.String, "is_chat": pl.Boolean, "error": pl.String}
ANSWER_SCHEMA = {"record_id": pl.String, "answer": pl.String, "error": pl.String}


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
    )
    check_engine_settings(
        model_path=spec.model_path or None, model_type=spec.model_type, use_cpu=settings.use_cpu, dtype=spec.dtype,
        workers=settings.workers, tensor_parallel_size=spec.tensor_parallel_size,
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
        )  # fmt: skip
        for model, c in models.items()
    }


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
            f"dtype={settings.dtype!r}, max_model_len={settings.max_model_len}, limit={settings.limit}) differ "
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
    common = dict(partitions_def=pdef, group_name=name, backfill_policy=BackfillPolicy.single_run())
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

    @asset(
        key=raw_key,
        code_version=versions["raw"],
        deps=[input_spec],
        kinds={"parquet"},
        description=f"Rows of task {task.name}: read_file over its shard's row range, with stable record ids.",
        **common,
    )
    def raw(context: AssetExecutionContext, settings: InferenceSettings) -> MaterializeResult:
        check_run_matches_code_version(task, settings, all_versions, None, "raw")  # --limit is in raw's version
        store = settings.store(task.name)
        manifest = manifest_for(store)
        shards = [manifest.shard(k) for k in context.partition_keys]
        by_file: dict[str, list] = defaultdict(list)
        for s in shards:
            by_file[s.file].append(s)
        total = 0
        for path, file_shards in by_file.items():
            rows = task.read_rows(path)  # one read per file per step, however many shards
            for s in file_shards:
                chunk = rows[s.start : s.stop]
                if len(chunk) < s.rows:
                    context.log.warning(
                        f"{path} now has {len(rows)} rows; shard {s.key} expected "
                        f"rows {s.start}..{s.stop}: the file changed since registration"
                    )
                if settings.limit is not None:
                    chunk = chunk[: settings.limit]
                df = pl.DataFrame(
                    {
                        "record_id": [f"{s.file_id}:{s.start + i}" for i in range(len(chunk))],
                        "file": [path] * len(chunk),
                        "index": [s.start + i for i in range(len(chunk))],
                        "data": [to_json(r) for r in chunk],
                    },
                    schema=RAW_SCHEMA,
                )
                store.write_frame("raw", s.key, df)
                store.log_shard(s.key, f"raw: {df.height} rows from {path}[{s.start}:{s.stop}]")
                total += df.height
                context.add_asset_metadata(
                    {
                        "rows": df.height,
                        "file": path,
                        "row_range": f"{s.start}..{s.stop}",
                        "preview": preview(df, ["record_id", "data"]),
                    },
                    partition_key=s.key,
                )
        return MaterializeResult(metadata={"shards_in_step": len(shards), "rows_in_step": total})

    @asset(
        key=prompts_key,
        code_version=versions["prompts"],
        deps=[raw_key],
        kinds={"parquet"},
        description="format_prompt per row; a row whose format_prompt raises keeps its error.",
        **common,
    )
    def prompts(context: AssetExecutionContext, settings: InferenceSettings) -> MaterializeResult:
        store = settings.store(task.name)
        errors_total = 0
        for key in context.partition_keys:
            raw_df = store.read_frame("raw", key)
            texts: list[str | None] = []
            is_chat: list[bool] = []
            errors: list[str | None] = []
            for row in raw_df.iter_rows(named=True):
                try:
                    p = task.format_prompt(json.loads(row["data"]))
                except Exception as exc:
                    texts.append(None)
                    is_chat.append(False)
                    errors.append(
                        f"format_prompt raised {type(exc).__name__}: {exc} (row {row['index']} of {row['file']})"
                    )
                else:
                    texts.append(p if isinstance(p, str) else json.dumps(p, ensure_ascii=False))
                    is_chat.append(not isinstance(p, str))
                    errors.append(None)
            df = pl.DataFrame(
                {"record_id": raw_df["record_id"], "prompt": texts, "is_chat": is_chat, "error": errors},
                schema=PROMPT_SCHEMA,
            )
            store.write_frame("prompts", key, df)
            n_err = sum(e is not None for e in errors)
            errors_total += n_err
            if n_err:
                context.log.warning(f"shard {key}: {n_err} prompt error(s): {error_summary(errors)}")
            store.log_shard(key, f"prompts: {df.height} rows, {n_err} errors")
            context.add_asset_metadata(
                {
                    "rows": df.height,
                    "errors": n_err,
                    "chat_prompts": sum(is_chat),
                    "preview": preview(df, ["record_id", "prompt", "error"]),
                },
                partition_key=key,
            )
        return MaterializeResult(
            metadata={"shards_in_step": len(context.partition_keys), "errors_in_step": errors_total}
        )

    def model_assets(model: str | None) -> list[AssetsDefinition]:
        """completions and answers of the run's model (``model=None``) or of a named model of the task."""
        comp_key = AssetKey([name, "completions"] if model is None else [name, model, "completions"])
        answers_key = AssetKey([name, "answers"] if model is None else [name, model, "answers"])
        model_versions = all_versions[model]

        @asset(
            key=comp_key,
            code_version=model_versions["completions"],
            deps=[prompts_key],
            kinds={"parquet"},
            op_tags={GPU_TAG: "settings"},  # the executor leases workers x tensor_parallel_size GPUs
            description=(f"Completions of model {model!r} (from the task's task_settings.json). " if model else "")
            + "The model's completions: every sample, finish reasons, token counts, model and "
            "sampling parameters. One engine load per step; each shard is recorded as it lands.",
            **common,
        )
        def completions(context: AssetExecutionContext, settings: InferenceSettings) -> MaterializeResult:
            check_run_matches_code_version(task, settings, all_versions, model, "completions")
            spec = engine_spec(settings, task.settings.models.get(model) if model else None)
            if spec.model_type == "hf":
                check_hf_supported(task.sampling_params)
            store = settings.store(task.name)
            keys = list(context.partition_keys)
            slices = (
                None
                if settings.use_cpu
                else split_gpus(visible_gpu_ids(), settings.workers, settings.tensor_parallel_size)
            )
            jobs = [
                ShardJob(k, str(store.shard_path("prompts", k)), str(store.shard_path("completions", k, model)))
                for k in keys
            ]
            missing = [k for k in keys if not store.has("prompts", k)]
            if missing:  # before any model is loaded
                raise Failure(
                    f"prompts are not materialized for shard(s) {', '.join(missing[:5])}: "
                    f"materialize {name}/prompts for them first"
                )
            chat = [
                k for k in keys if pl.read_parquet(store.shard_path("prompts", k), columns=["is_chat"])["is_chat"].any()
            ]
            if chat and has_chat_template(spec.model_path) is False:  # before any model is loaded
                raise Failure(
                    f"format_prompt of task {task.name} returned chat messages (shard {chat[0]}), but the model at "
                    f"{spec.model_path} has no chat template; return a string from format_prompt or use a chat model"
                )

            def on_message(worker: int, msg: dict) -> None:
                if msg["type"] == "loaded":
                    context.log.info(f"worker {worker}: model loaded in {msg['seconds']} s (pid {msg['pid']})")
                elif msg["type"] == "exited":
                    context.log.error(f"worker {worker} stopped: {msg['error']} (log: {msg['log']})")

            pool = WorkerPool(
                spec,
                task.sampling_params,
                workers=settings.workers,
                gpu_slices=slices,
                log_dir=store.output_dir / "logs" / "workers" / context.run.run_id[:8],
                on_message=on_message,
            )
            t0 = time.perf_counter()
            failed: dict[str, str] = {}
            out_tokens = 0
            for r in pool.run(jobs):
                if not r.ok:
                    failed[r.key] = r.error or "unknown error"
                    context.log.error(f"shard {r.key} failed on worker {r.worker}: {r.error}")
                    store.log_shard(r.key, f"completions FAILED on worker {r.worker}: {r.error}")
                    continue
                out_tokens += r.completion_tokens
                if model is None:  # the seed's layout holds the run's model
                    export_shard(store, r.key, with_answers=False, save_text=False)
                md = {
                    "rows": r.rows,
                    "errors": r.errors,
                    "prompt_tokens": r.prompt_tokens,
                    "completion_tokens": r.completion_tokens,
                    "tokens_per_s": round(r.tokens_per_s, 1),
                    "seconds": r.seconds,
                    "worker": r.worker,
                    "gpus": r.gpus or "cpu",
                    "model": spec.model_path,
                    "model_name": model or "default",
                    "preview": preview(
                        store.read_frame("completions", r.key, model),
                        ["record_id", "response", "finish_reason", "error"],
                    ),
                }
                # Recorded now, not at step end: a killed run keeps this shard.
                context.log_event(
                    AssetMaterialization(
                        asset_key=comp_key, partition=r.key, metadata=md, tags=provenance_tags(context, comp_key)
                    )
                )
                context.add_asset_metadata(md, partition_key=r.key)
                msg = (
                    f"shard {r.key}: {r.rows} rows, {r.errors} errors, {r.completion_tokens} tokens out, "
                    f"{r.tokens_per_s:.0f} tok/s on worker {r.worker} ({r.gpus or 'cpu'})"
                )
                context.log.info(msg)
                store.log_shard(r.key, f"completions[{model or 'default'}]: " + msg)
            elapsed = time.perf_counter() - t0
            if failed:
                raise Failure(
                    description=f"{len(failed)} of {len(keys)} shard(s) failed: "
                    + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in list(failed.items())[:5]),
                    metadata={"failed_shards": ", ".join(failed)},
                )
            return MaterializeResult(
                metadata={
                    "shards_in_step": len(keys),
                    "completion_tokens": out_tokens,
                    "step_tokens_per_s": round(out_tokens / elapsed, 1),
                }
            )

        @asset(
            key=answers_key,
            code_version=model_versions["answers"],
            deps=[comp_key],
            kinds={"parquet"},
            description="extract_answer on each first sample. Never runs the model.",
            **common,
        )
        def answers(context: AssetExecutionContext, settings: InferenceSettings) -> MaterializeResult:
            store = settings.store(task.name)
            ok_total = rows_total = 0
            for key in context.partition_keys:
                comps = store.read_frame("completions", key, model)
                values: list[str | None] = []
                errors: list[str | None] = []
                for row in comps.iter_rows(named=True):
                    if row["error"] is not None:
                        values.append(None)
                        errors.append(f"no completion: {row['error']}")
                        continue
                    try:
                        ans = task.extract_answer(row["response"])
                    except Exception as exc:
                        values.append(None)
                        errors.append(f"extract_answer raised {type(exc).__name__}: {exc}")
                    else:
                        values.append(None if ans is None else to_json(ans))
                        errors.append(None)
                df = pl.DataFrame(
                    {"record_id": comps["record_id"], "answer": values, "error": errors}, schema=ANSWER_SCHEMA
                )
                store.write_frame("answers", key, df, model)
                if model is None:
                    export_shard(store, key, with_answers=True, save_text=settings.save_text)
                extracted = sum(v is not None for v in values)
                n_err = sum(e is not None for e in errors)
                ok_total += extracted
                rows_total += df.height
                if n_err:
                    context.log.warning(f"shard {key}: {n_err} row(s) without an answer: {error_summary(errors)}")
                store.log_shard(key, f"answers: {extracted}/{df.height} extracted, {n_err} errors")
                context.add_asset_metadata(
                    {
                        "rows": df.height,
                        "extracted": extracted,
                        "errors": n_err,
                        "extraction_rate": round(extracted / df.height, 4) if df.height else 0.0,
                        "model_name": model or "default",
                        "preview": preview(df, ["record_id", "answer", "error"]),
                    },
                    partition_key=key,
                )
            return MaterializeResult(
                metadata={
                    "shards_in_step": len(context.partition_keys),
                    "extraction_rate": round(ok_total / rows_total, 4) if rows_total else 0.0,
                }
            )

        return [completions, answers]

    model_chain = [a for m in all_versions for a in model_assets(m)]

    task_job = define_asset_job(
        f"{name}_job",
        selection=AssetSelection.assets(raw, prompts, *model_chain),
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

    return TaskAssets(
        task=task, input=input_spec, assets=[raw, prompts, *model_chain], job=task_job, register_job=register_job
    )
