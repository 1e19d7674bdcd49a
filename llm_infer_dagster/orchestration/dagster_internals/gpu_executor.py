"""The Dagster executor every task job uses: each step in its own process, GPU steps on leased GPUs.

Built on Dagster's ``StepDelegatingExecutor`` + ``StepHandler`` (the path dagster-docker and dagster-k8s
take; these are ``dagster._core`` names, imported from ``private.py`` beside this file, so the project pins
Dagster's minor version and ``tests/orchestration/test_gpu_executor.py`` runs the real executor). A step's GPU
need comes from its ``llm_infer/gpus`` tag: a number, or ``settings`` for workers x tensor_parallel_size of the
run's settings (0 with use_cpu).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from dagster import (
    AssetKey,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    Field,
    Noneable,
    executor,
    multiple_process_executor_requirements,
)

from llm_infer_dagster.orchestration.asset_keys import COMPLETIONS, asset_of
from llm_infer_dagster.orchestration.dagster_internals.private import (
    CheckStepHealthResult,
    RetryMode,
    StepDelegatingExecutor,
    StepHandler,
    StepHandlerContext,
    get_retries_config,
)
from llm_infer_dagster.orchestration.run_health import process_tags
from llm_infer_dagster.orchestration.settings import RunSettings
from llm_infer_dagster.runtime.gpus import visible_gpu_ids
from llm_infer_dagster.runtime.leases import DEFAULT_LOCK_DIR, GpuLeaser

GPU_TAG = "llm_infer/gpus"
#: JSON of the deployment's ``run_defaults`` (e.g. a Component's ``use_cpu: true``), beside ``GPU_TAG``.
RUN_DEFAULTS_TAG = "llm_infer/run_defaults"


def gpus_needed(
    step_tags: Mapping[str, str], run_config: Mapping[str, Any], asset_selection: AbstractSet[AssetKey] | None = None
) -> int:
    """How many GPUs a step needs, from its tag and the run's settings resource config.

    ``settings`` steps need none when the run selects no ``completions`` asset (re-extraction, or making
    prompts only): they run no model.
    """
    tag = step_tags.get(GPU_TAG)
    if tag is None:
        return 0
    if tag.strip().isdigit():
        return int(tag)
    if tag != "settings":
        raise ValueError(f"tag {GPU_TAG}={tag!r} must be a number or 'settings'")
    if asset_selection is not None and not any(asset_of(k) == COMPLETIONS for k in asset_selection):
        return 0
    defaults = json.loads(step_tags.get(RUN_DEFAULTS_TAG) or "{}")
    return RunSettings.from_run_config(run_config, defaults).gpus_per_run


def step_command(args: Sequence[str]) -> list[str]:
    """Dagster's step command, with a bare ``dagster`` made into this interpreter's ``-m dagster``."""
    args = list(args)
    if args and os.path.basename(args[0]) == "dagster":
        return [sys.executable, "-m", "dagster", *args[1:]]
    return args


def safe_path(command: Sequence[str]) -> list[str]:
    """``python -m X ...`` made ``python -P -m X ...``: the step's cwd (the user's) is not put on ``sys.path``.

    ``-m`` puts the cwd ahead of the standard library: a ``concurrent.py`` or ``json.py`` in the folder
    ``llm-infer`` runs in would be imported (and run) by every step, breaking it. The cwd itself stays the
    user's, so relative paths (``output_dir``'s default) mean what they meant there.
    """
    command = list(command)
    if len(command) > 1 and command[1] == "-m" and os.path.basename(command[0]).startswith("python"):
        return [command[0], "-P", *command[1:]]
    return command


class GpuStepHandler(StepHandler):
    """Starts each step as ``lease_exec ... -- dagster api execute_step``; tracks and kills those processes."""

    def __init__(self, gpu_ids: Sequence[str], lock_dir: str, lease_timeout: float | None = None) -> None:
        self.leaser = GpuLeaser(gpu_ids, lock_dir)
        self.lease_timeout = lease_timeout
        self._procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}

    @property
    def name(self) -> str:
        return "llm_infer_gpu"

    @staticmethod
    def _key(ctx: StepHandlerContext) -> tuple[str, str]:
        keys = ctx.execute_step_args.step_keys_to_execute
        assert keys is not None and len(keys) == 1, "one step per process"
        return ctx.execute_step_args.run_id, keys[0]

    def launch_step(self, step_handler_context: StepHandlerContext) -> Iterator[DagsterEvent]:
        ctx = step_handler_context
        run_id, step_key = self._key(ctx)
        need = gpus_needed(ctx.step_tags[step_key], ctx.dagster_run.run_config, ctx.dagster_run.asset_selection)
        self.leaser.check_need(need)  # more than the host has: fail now, not after waiting forever
        command = [
            sys.executable, "-P", "-m", "llm_infer_dagster.runtime.lease_exec",
            "--need", str(need), "--gpus", ",".join(self.leaser.gpu_ids), "--lock-dir", str(self.leaser.lock_dir),
            "--label", step_key,
            *(["--timeout", str(self.lease_timeout)] if self.lease_timeout else []),
            "--", *safe_path(step_command(ctx.execute_step_args.get_command_args())),
        ]  # fmt: skip
        proc = _start_step_process(command)
        self._procs[(run_id, step_key)] = proc
        yield DagsterEvent.step_worker_starting(
            ctx.get_step_context(step_key),
            message=f"step {step_key} starting in pid {proc.pid} with {need} GPU(s) to lease",
            metadata={"pid": str(proc.pid), "gpus_needed": need},
        )

    def check_step_health(self, step_handler_context: StepHandlerContext) -> CheckStepHealthResult:
        proc = self._procs.get(self._key(step_handler_context))
        code = None if proc is None else proc.poll()
        if code is None or code == 0:
            return CheckStepHealthResult.healthy()
        return CheckStepHealthResult.unhealthy(f"step process {proc.pid} exited with code {code}")  # type: ignore[union-attr]

    def terminate_step(self, step_handler_context: StepHandlerContext) -> Iterator[DagsterEvent]:
        proc = self._procs.pop(self._key(step_handler_context), None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        yield from ()


STEP_LOG_ENV = "LLM_INFER_STEP_LOG"


# What a ``-P`` step process finds at ``sys.path[0]``: no directory, so nothing is imported from it. Dagster
# takes ``sys.path[0]`` for the script's folder and drops it while importing the code location: with ``-P`` that
# would otherwise be the first ``PYTHONPATH`` entry (where the code may live) or the standard library's zip.
SYS_PATH_PLACEHOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__no_imports_here__")


def step_env() -> dict[str, str]:
    """The environment of a step process: this one's, with nothing that puts the user's cwd on ``sys.path``.

    ``PYTHONSAFEPATH=1``: ``-P`` covers the step process itself; every Python under it inherits this, so its engine
    workers (``python -m ...worker``) and their spawned engine cores (``python -c ...``) do not put the cwd
    back at the front of ``sys.path``. ``PYTHONPATH`` loses empty entries (an ``export PYTHONPATH=$PYTHONPATH:/x``
    with nothing before it means the cwd) and starts with :data:`SYS_PATH_PLACEHOLDER`.
    """
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {
        **os.environ,
        "PYTHONSAFEPATH": "1",
        "PYTHONPATH": os.pathsep.join([SYS_PATH_PLACEHOLDER, *inherited]),
    }


def _start_step_process(command: list[str]) -> subprocess.Popen[bytes]:
    """Start a step process; with ``LLM_INFER_STEP_LOG`` set (``llm-infer`` sets it), its output goes there.

    A terminal user of ``llm-infer`` watches a progress bar, not every step process's Dagster debug lines; the
    Dagster UI and that file keep them all.
    """
    log_path = os.environ.get(STEP_LOG_ENV)
    if not log_path:
        return subprocess.Popen(command, env=step_env())
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, env=step_env(), stdout=log, stderr=subprocess.STDOUT)


#: What a step records per shard: the orchestrating process has no use for them, only the event log does.
SHARD_RECORDS = frozenset({DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_CHECK_EVALUATION})


class _StepEventsOnly:
    """``instance``, whose run-record reads skip the per-shard records (see ``GpuExecutor._pop_events``)."""

    def __init__(self, instance: DagsterInstance) -> None:
        self._instance = instance

    def __getattr__(self, name: str) -> Any:
        return getattr(self._instance, name)

    def get_records_for_run(self, run_id: str, cursor: Any = None, of_type: Any = None, limit: Any = None) -> Any:
        kinds = set(of_type) if of_type is not None else set(DagsterEventType)
        return self._instance.get_records_for_run(run_id, cursor, of_type=kinds - SHARD_RECORDS, limit=limit)


class GpuExecutor(StepDelegatingExecutor):
    """Checks every step's GPU need before any step starts.

    Checked only at launch, a completions step needing more GPUs than the host has would fail after the raw
    and prompts steps had run (and spent their time) for nothing.
    """

    def __init__(self, step_handler: GpuStepHandler, **kwargs: Any) -> None:
        super().__init__(step_handler, **kwargs)
        self.gpu_step_handler = step_handler

    def _pop_events(self, instance: DagsterInstance, run_id: str, seen_storage_ids: set[int]) -> Any:
        """The steps' events, less their per-shard materializations and check evaluations.

        Dagster's executor polls the run's events 10 times a second and deserializes each one to follow its
        steps (start, success, failure, retry); a step recording shards writes 8 records a shard that it
        never looks at, on the cores the engine needs. They stay in the event log; only this process's tail
        of it skips them.
        """
        return super()._pop_events(_StepEventsOnly(instance), run_id, seen_storage_ids)  # type: ignore[arg-type]

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[DagsterEvent]:
        """``plan_context``: Dagster's ``PlanOrchestrationContext``; ``execution_plan``: its ``ExecutionPlan``."""
        run = plan_context.dagster_run
        # Who orchestrates this run, for llm-infer's dead-run check: the DefaultRunLauncher (UI, daemon) has
        # no health check, and a SIGKILLed run worker would leave the run STARTED for ever.
        plan_context.instance.add_run_tags(run.run_id, process_tags(run.run_id))
        for step in execution_plan.get_steps_to_execute_in_topo_order():  # a SettingsError here: no step ran
            self.gpu_step_handler.leaser.check_need(gpus_needed(step.tags, run.run_config, run.asset_selection))
        yield from super().execute(plan_context, execution_plan)


@executor(
    name="llm_infer_gpu_executor",
    config_schema={
        "gpus": Field(
            Noneable([str]),
            default_value=None,
            description="GPU ids to lease; default CUDA_VISIBLE_DEVICES, else what nvidia-smi lists",
        ),
        "lock_dir": Field(
            str,
            default_value=os.environ.get("LLM_INFER_GPU_LOCK_DIR", DEFAULT_LOCK_DIR),
            description="host-wide lock files, one per GPU (LLM_INFER_GPU_LOCK_DIR)",
        ),
        "lease_timeout_s": Field(
            Noneable(float), default_value=None, description="give up waiting for GPUs after this long (default: wait)"
        ),
        "max_concurrent": Field(Noneable(int), default_value=None, description="steps at once in this run"),
        "retries": get_retries_config(),
    },
    requirements=multiple_process_executor_requirements(),
)
def gpu_executor(init_context: Any) -> GpuExecutor:
    """Each step in its own process; steps tagged ``llm_infer/gpus`` hold host-wide GPU leases."""
    cfg = init_context.executor_config
    gpu_ids = cfg["gpus"] if cfg["gpus"] is not None else visible_gpu_ids()
    return GpuExecutor(
        GpuStepHandler(gpu_ids, cfg["lock_dir"], cfg["lease_timeout_s"]),
        retries=RetryMode.from_config(cfg["retries"]),  # type: ignore[arg-type]
        max_concurrent=cfg["max_concurrent"],
        sleep_seconds=0.1,
        check_step_health_interval_seconds=1,
    )
