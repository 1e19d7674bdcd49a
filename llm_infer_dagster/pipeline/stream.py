"""The streaming loop behind a task's assets: each shard flows raw -> prompts -> completions -> answers.

One call (:meth:`ShardStream.run`) covers a range of shards and the selected steps. The engine workers start
first; while they load and while they generate, the next shards' raw rows and prompts are made (the pool takes
them lazily), so the engine never waits for a prompt that could exist already. A shard's answers are extracted
the moment its completions land. Each shard of each step is reported to the sink (``events.py``) as soon as its
Parquet file is in place, so a killed run keeps every shard it finished and nothing is reported twice. Pure row
transforms live in ``shards/transforms.py``; this module reads, writes and reports. No Dagster here: the Dagster
step (``orchestration/assets/pipeline.py``) is a sink that records what this reports.

Models whose engines differ only in their LoRA adapters (a base model and its adapters, or several
adapters of one base) share one worker pool: each worker loads the base once with every adapter of the
group, and each shard becomes one job per model, reported as it lands like any other.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from llm_infer_dagster.deployment import Deployment
from llm_infer_dagster.engines.lora import base_shares_engine_with_adapters
from llm_infer_dagster.engines.prefix_order import plan_groups, prefix_signature
from llm_infer_dagster.engines.spec import EngineSpec, has_chat_template
from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.pipeline.events import AssetRef, Checked, FilePath, Landed, Markdown, StreamFailed, StreamSink
from llm_infer_dagster.pipeline.summaries import error_summary, preview_markdown
from llm_infer_dagster.pipeline.throughput import Progress, Throughput
from llm_infer_dagster.runtime.dispatch import ShardJob, ShardResult
from llm_infer_dagster.runtime.messages import Exited, Loaded, WorkerEvent
from llm_infer_dagster.runtime.workers import devices_in_use, open_worker_pool
from llm_infer_dagster.shards.exports import export_shard
from llm_infer_dagster.shards.locks import ShardLeases
from llm_infer_dagster.shards.manifest import ShardManifest, manifest_for
from llm_infer_dagster.shards.pooled import pooled_metadata
from llm_infer_dagster.shards.quality import (
    CheckResult,
    answers_checks,
    completions_checks,
    structured_outputs_matched,
)
from llm_infer_dagster.shards.report import score_metadata
from llm_infer_dagster.shards.storage import mtime, read_parquet
from llm_infer_dagster.shards.store import TaskStore, atomic_write_text
from llm_infer_dagster.shards.transforms import answers_frame, prompts_frame, raw_frame
from llm_infer_dagster.tasks.loader import TaskConfig
from llm_infer_dagster.tasks.task_settings import SETTINGS_FILE

RAW, PROMPTS, INPUT = AssetRef("raw"), AssetRef("prompts"), AssetRef("input")

#: Shards planned together by prefix-aware planning (``prefix_planning`` in task_settings.json): their prompts
#: are made before the first of them runs, so a larger window delays the first shard a little more.
PLAN_WINDOW = 64


@dataclass(frozen=True)
class StreamSettings:
    """How the run uses the machine (the run's settings; none of them changes what a shard holds)."""

    workers: int = 1
    tensor_parallel_size: int = 1
    use_cpu: bool = False
    ray_address: str | None = None
    timeout: int | None = None
    save_text: bool = False


@dataclass
class ModelTarget:
    """The completions/answers pair of one model of the task, and whether this step makes each."""

    name: str | None  # None: the run's model
    versions: Mapping[str, str]  # asset name -> code version
    spec: EngineSpec | None  # None when this step runs no model for it
    make_completions: bool
    make_answers: bool
    adapter: str | None = None  # the LoRA adapter folder applied to spec's (base) model; None: the model itself

    @property
    def completions(self) -> AssetRef:
        return AssetRef("completions", self.name)

    @property
    def answers(self) -> AssetRef:
        return AssetRef("answers", self.name)


def engine_groups(targets: list[ModelTarget]) -> list[list[ModelTarget]]:
    """The targets that make completions, grouped by base engine (first appearance order): one pool each.

    Models on one base share an engine: its LoRA adapters, and the base itself where the engine allows
    (not vLLM on CPU: ``base_shares_engine_with_adapters``).
    """

    def fits(t: ModelTarget, group: list[ModelTarget]) -> bool:
        assert t.spec is not None and group[0].spec is not None
        if group[0].spec.base() != t.spec.base():
            return False
        same_kind = all((m.adapter is None) == (t.adapter is None) for m in group)
        return same_kind or base_shares_engine_with_adapters(t.spec)

    groups: list[list[ModelTarget]] = []
    for t in targets:
        if not t.make_completions or t.spec is None:
            continue
        group = next((g for g in groups if fits(t, g)), None)
        if group is None:
            groups.append([t])
        else:
            group.append(t)
    return groups


def _adapter_name(target: ModelTarget) -> str | None:
    """The name a target's LoRA adapter has in its group's engine (its model name), or None."""
    return (target.name or "default") if target.adapter is not None else None


class ShardStream:
    """Runs the selected steps of one task over a range of shards, reporting to ``sink``. ``run()`` does it all."""

    def __init__(
        self,
        sink: StreamSink,
        task: TaskConfig,
        deployment: Deployment,
        settings: StreamSettings,
        *,
        shard_keys: list[str],
        run_id: str,
        versions: Mapping[str, str],  # code versions of raw and prompts
        targets: list[ModelTarget],
        make_raw: bool,
        make_prompts: bool,
        selected_checks: set[tuple[AssetRef, str]] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        self.sink, self.log, self.task, self.deployment, self.settings = sink, sink.log, task, deployment, settings
        self.versions, self.targets = versions, targets
        self.make_raw, self.make_prompts = make_raw, make_prompts
        self.store: TaskStore = deployment.store(task.name)
        self.shard_keys = list(shard_keys)
        self.run_id = run_id
        self.failed: dict[str, str] = {}  # shard -> why it failed (first line is what the CLI shows)
        self.bad_input: set[str] = set()  # failed shards whose cause is the user's input or task code
        self.skipped: dict[str, str] = {}  # shards another run is making (or made while this one ran)
        self.leases = ShardLeases(self.store, holder=run_id)
        self._claimed: set[str] = set()
        self._started = time.time()
        self._pace_from = self._started  # when the next engine group began to hold its devices
        # raw and prompts of the shards made here and not yet answered, so the seed export reads neither again
        self._frames: dict[str, tuple[pl.DataFrame, pl.DataFrame]] = {}
        self.checks = task.settings.checks  # the per-shard quality checks' thresholds
        self.selected_checks = set(selected_checks)  # (asset, check name) the caller wants evaluated
        self.groups = engine_groups(targets)  # one worker pool (one base model load per worker) each
        self._jobs_left: dict[str, int] = {}  # shard -> its jobs still running in the current pool
        self._calibrated: set[int] = set()  # workers whose calibration choice is logged
        self._rows: dict[str, int] = {}  # shard -> the rows it holds (--limit applied), for the step's pace

    # -- reporting -------------------------------------------------------------------------------------------

    def _paths(self, asset: str, shard: str, model: str | None, seed_kind: str) -> dict[str, FilePath]:
        """Where a person finds the shard: its Parquet file, and for the default model the seed-layout result."""
        out = {"parquet": FilePath(str(self.store.shard_path(asset, shard, model)))}
        if model is None:
            out["seed_result"] = FilePath(str(self.store.result_path(seed_kind, shard)))
        return out

    def _name(self, ref: AssetRef) -> str:
        """``<task>/[<model>/]<asset>``: how messages name an asset."""
        return "/".join([self.task.dagster_name, *([ref.model] if ref.model else []), ref.asset])

    # -- the step --------------------------------------------------------------------------------------------

    def run(self) -> None:
        if swept := self.store.sweep_stale_temps():  # a crashed writer's temps (never a half-written shard)
            self.log.info(f"removed {swept} temp file(s) left mid-write by a process that is gone")
        try:
            self._run()
        finally:
            self.leases.release_all()

    def _claim(self, shard: str) -> bool:
        """Lease ``shard`` for this step; False if another run is making it or has made it since this step began.

        Two runs over the same shards (two ``llm-infer`` commands, one beside a Launchpad run) then split the
        work instead of both computing it.
        """
        first = shard not in self._claimed
        if not self.leases.try_acquire(shard):
            self.skipped[shard] = f"being made by {self.leases.holder_of(shard) or 'another run'}"
        elif first and self._made_since_start(shard):
            self.leases.release(shard)
            self.skipped[shard] = "made by another run while this one ran"
        else:
            self._claimed.add(shard)
            return True
        self.log.warning(f"shard {shard} skipped: {self.skipped[shard]}")
        return False

    def _made_since_start(self, shard: str) -> bool:
        """Whether the last file this step would write for ``shard`` was written by someone since it started."""
        target = next((t for t in self.targets if t.make_answers or t.make_completions), None)
        if target is not None:
            path = self.store.shard_path("answers" if target.make_answers else "completions", shard, target.name)
        else:
            path = self.store.shard_path("prompts" if self.make_prompts else "raw", shard)
        try:
            return mtime(path) > self._started
        except FileNotFoundError:
            return False

    def _fail(self, shard: str, why: str, *, bad_input: bool = False) -> None:
        self.failed[shard] = why
        self._frames.pop(shard, None)
        if bad_input:
            self.bad_input.add(shard)
        self._release(shard)

    def _release(self, shard: str) -> None:
        """Drop ``shard``'s lease, once no job of the current pool (one per model of the group) still runs it."""
        left = self._jobs_left.get(shard, 0) - 1
        if left > 0:
            self._jobs_left[shard] = left
            return
        self._jobs_left.pop(shard, None)
        self.leases.release(shard)

    def _run(self) -> None:
        log = self.log
        manifest = manifest_for(self.store)
        limit = self.deployment.limit
        for shard in self.shard_keys:
            rows = manifest.shard(shard).rows  # every shard is registered: fail before any work otherwise
            self._rows[shard] = rows if limit is None else min(rows, limit)
        self._preflight()

        t0 = time.perf_counter()
        prep = self._prepare(manifest) if (self.make_raw or self.make_prompts) else None
        ran_model = False
        for group in self.groups:
            shards = prep if (prep is not None and not ran_model) else self._existing_prompts()
            self._complete(group, shards)
            ran_model = True
        if prep is not None and not ran_model:
            for _ in prep:  # no model in this step: just make raw and prompts
                pass
        for target in self.targets:
            if target.make_answers and not target.make_completions:
                for shard in self.shard_keys:
                    if shard not in self.failed and self._claim(shard):
                        comps = self.store.read_frame("completions", shard, target.name)
                        blocked = [c for c in completions_checks(comps, self.checks) if c.blocks]
                        if blocked:  # made earlier, and its blocking check fails: it still must not flow on
                            self._block(target, shard, blocked)
                        else:
                            self._answer(target, shard, comps)
        self._checks_alone()
        log.info(
            f"step done: {len(self.shard_keys)} shard(s) in {time.perf_counter() - t0:.1f} s, {len(self.failed)} failed"
            + (f", {len(self.skipped)} skipped (another run had them)" if self.skipped else "")
        )
        if self.failed:
            raise StreamFailed(
                f"{len(self.failed)} of {len(self.shard_keys)} shard(s) failed: "
                + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in list(self.failed.items())[:5]),
                # shard -> the first line of why: what llm-infer's last line reports
                failed_shards={k: _summary(v) for k, v in self.failed.items()},
                bad_input=not (set(self.failed) - self.bad_input),
            )

    def _preflight(self) -> None:
        """Checks that need no model, before any worker starts."""
        name = self.task.dagster_name
        if not self.make_prompts and any(t.make_completions for t in self.targets):
            missing = [k for k in self.shard_keys if not self.store.has("prompts", k)]
            if missing:
                raise StreamFailed(
                    f"prompts are not materialized for shard(s) {', '.join(missing[:5])}: "
                    f"materialize {name}/prompts for them first"
                )
        for t in self.targets:
            if t.make_answers and not t.make_completions:
                missing = [k for k in self.shard_keys if not self.store.has("completions", k, t.name)]
                if missing:
                    raise StreamFailed(
                        f"completions are not materialized for shard(s) {', '.join(missing[:5])}: "
                        f"materialize {self._name(t.completions)} for them first"
                    )
        if not self.make_prompts:
            for t in self.targets:
                if t.make_completions and t.spec is not None:
                    chat = next((k for k in self.shard_keys if self._is_chat(self._chat_column(k))), None)
                    if chat is not None:
                        self._check_chat_template(t.spec, chat)

    def _chat_column(self, shard: str) -> pl.DataFrame:
        return read_parquet(self.store.shard_path("prompts", shard), columns=["is_chat"])

    @staticmethod
    def _is_chat(prompts: pl.DataFrame) -> bool:
        return bool(prompts["is_chat"].any())

    def _check_chat_template(self, spec: EngineSpec, shard: str) -> None:
        if has_chat_template(spec.model_path) is False:
            raise StreamFailed(
                f"format_prompt of task {self.task.name} returned chat messages (shard {shard}), but the model at "
                f"{spec.model_path} has no chat template; return a string from format_prompt or use a chat model"
            )

    def _prepare(self, manifest: ShardManifest) -> Iterator[str]:
        """Make raw and prompts shard by shard (one read per input file), recording each; yield its key."""
        log, store = self.log, self.store
        cached: tuple[str, Sequence[dict[str, Any]] | TaskConfigError] | None = None
        checked_chat = False
        first_group = self.groups[0] if self.groups else []
        first_model = first_group[0] if first_group else None
        for shard_key in self.shard_keys:
            s = manifest.shard(shard_key)
            if not self._claim(shard_key):
                continue
            if self.make_raw:
                self.sink.making(RAW, s.key)
                if cached is None or cached[0] != s.file:
                    try:
                        cached = (s.file, self.task.shard_rows(s.file))  # a YAML task reads only the slice
                    except TaskConfigError as exc:  # this file's shards fail; the others carry on
                        cached = (s.file, exc)
                rows = cached[1]
                if isinstance(rows, TaskConfigError):
                    self._fail(s.key, str(rows), bad_input=True)
                    log.error(f"shard {s.key}: {rows}")
                    store.log_shard(s.key, f"raw FAILED: {rows}")
                    continue
                if len(rows) < s.stop:  # remaking it now would replace its results with fewer rows or none
                    self._fail(s.key, (
                        f"input file {s.file} now has {len(rows)} rows, fewer than shard {s.key}'s rows "
                        f"{s.start}..{s.stop}: the shard keeps the results it has; to redo it with the rows the file "
                        "has now, run llm-infer with --redo_shrunk"
                    ), bad_input=True)  # fmt: skip
                    log.warning(self.failed[s.key])
                    store.log_shard(s.key, f"raw NOT remade: {self.failed[s.key]}")
                    continue
                raw = raw_frame(s, rows[s.start : s.stop], self.deployment.limit)
                store.write_frame("raw", s.key, raw)
                store.log_shard(s.key, f"raw: {raw.height} rows from {s.file}[{s.start}:{s.stop}]")
                self._record(RAW, s.key, self.versions["raw"], INPUT, {
                    "rows": raw.height,
                    "file": s.file,
                    "chunk": s.chunk,
                    "row_range": f"{s.start}..{s.stop}",
                    "parquet": FilePath(str(store.shard_path("raw", s.key))),
                    "preview": Markdown(preview_markdown(raw, ["record_id", "data"])),
                })  # fmt: skip
            else:
                raw = store.read_frame("raw", s.key)
            if self.make_prompts:
                self.sink.making(PROMPTS, s.key)
                try:
                    prompts = prompts_frame(raw, self.task.format_prompt)
                except TaskConfigError as exc:  # a row's own sampling_params are not valid: the shard fails
                    self._fail(s.key, str(exc), bad_input=True)
                    log.error(f"shard {s.key}: {exc}")
                    store.log_shard(s.key, f"prompts FAILED: {exc}")
                    continue
                store.write_frame("prompts", s.key, prompts)
                n_err = int(prompts["error"].is_not_null().sum())
                if n_err:
                    log.warning(f"shard {s.key}: {n_err} prompt error(s): {error_summary(prompts['error'].to_list())}")
                store.log_shard(s.key, f"prompts: {prompts.height} rows, {n_err} errors")
                self._record(PROMPTS, s.key, self.versions["prompts"], RAW, {
                    "rows": prompts.height,
                    "errors": n_err,
                    "chat_prompts": int(prompts["is_chat"].sum()),
                    "parquet": FilePath(str(store.shard_path("prompts", s.key))),
                    "preview": Markdown(preview_markdown(prompts, ["record_id", "prompt", "error"])),
                })  # fmt: skip
                if any(t.name is None for t in first_group):
                    self._frames[s.key] = (raw, prompts)  # for the seed export (run's model only)
                spec = first_model.spec if first_model is not None else None
                if not checked_chat and spec is not None and self._is_chat(prompts):
                    self._check_chat_template(spec, s.key)  # raises before the engine is used
                    checked_chat = True
            if first_model is None:
                self.leases.release(s.key)  # nothing more to make for it in this step
            yield s.key

    def _existing_prompts(self) -> Iterator[str]:
        for k in self.shard_keys:
            if k not in self.failed and self._claim(k):
                yield k

    def _prefix_planned(self, shards: Iterator[str]) -> Iterator[tuple[str, int]]:
        """``shards`` reordered, PLAN_WINDOW at a time, so shards whose prompts share prefixes run back to back
        (each with its planning group, kept on one worker); which rows a shard holds is untouched."""
        groups_before = 0
        while window := list(itertools.islice(shards, PLAN_WINDOW)):
            signatures = []
            for key in window:
                try:
                    texts = self.store.read_frame("prompts", key)["prompt"].drop_nulls().to_list()
                except Exception:  # unreadable here: the worker reports it; plan the shard without prefixes
                    texts = []
                signatures.append(prefix_signature(texts))
            groups = plan_groups(signatures)
            for g, members in enumerate(groups):
                for i in members:
                    yield window[i], groups_before + g
            groups_before += len(groups)

    def _complete(self, group: list[ModelTarget], shards: Iterator[str]) -> None:
        """Run one engine over ``shards`` for every model of ``group``; record each shard as it lands.

        The group's models share a base model (``engine_groups``): the workers load it once with every LoRA
        adapter of the group, and each shard is one job per model (keyed ``<shard>@<model>`` when there are
        several), its lease held until the last of them is back.
        """
        first = group[0]
        assert first.spec is not None
        log, settings = self.log, self.settings
        adapters = {name: t.adapter for t in group if (name := _adapter_name(t)) and t.adapter}
        planning = self.task.settings.prefix_planning
        spec = dataclasses.replace(
            first.spec, lora_adapters=adapters, prefix_order=planning, calibrate=self.task.settings.calibrate
        )
        by_job: dict[str, tuple[ModelTarget, str]] = {}

        def jobs() -> Iterator[ShardJob]:
            for shard, plan_group in self._prefix_planned(shards) if planning else ((s, None) for s in shards):
                self._jobs_left[shard] = len(group)
                for t in group:
                    key = shard if len(group) == 1 else f"{shard}@{t.name or 'default'}"
                    by_job[key] = (t, shard)
                    out = self.store.shard_path("completions", shard, t.name)
                    prompts = self.store.shard_path("prompts", shard)
                    yield ShardJob(key, str(prompts), str(out), adapter=_adapter_name(t), group=plan_group)

        feed: Iterator[ShardJob] = jobs()
        if self.make_prompts:
            # The first shard is made before any worker starts: a chat task on a model without a chat
            # template fails here, before a model loads, and the engine's first job is ready when it is.
            feed = _prime(feed)
        with_adapters = f" with LoRA adapter(s) {', '.join(adapters)}" if adapters else ""

        def on_message(worker: int, msg: WorkerEvent) -> None:
            if isinstance(msg, Loaded):
                log.info(f"worker {worker}: model loaded in {msg.seconds} s (pid {msg.pid}){with_adapters}")
            elif isinstance(msg, Exited):
                log.error(f"worker {worker} stopped: {msg.error} (log: {msg.log})")

        log_dir = self.store.worker_log_dir / self.run_id[:8]
        # The step's pace: rows/s, tokens/s, ETA and device-hours, on each shard's metadata and log line.
        devices, unit = devices_in_use(settings.workers, settings.tensor_parallel_size, use_cpu=settings.use_cpu,
                                       ray_address=settings.ray_address)  # fmt: skip
        # The first engine's clock starts with the step (it holds its devices from then); a later one's with it.
        pace = Throughput(0, self._pace_from, devices=devices, unit=unit, parallel=settings.workers)

        landed: set[str] = set()

        def progress(r: ShardResult) -> Progress:
            pace.landed(time.time(), r.rows, r.completion_tokens)
            landed.add(r.key)
            gone = (self.skipped.keys() | self.failed.keys()) - landed  # shards that will not land here
            planned = sum(n for k, n in self._rows.items() if k not in gone) * len(group)
            pace.rows_total = max(pace.rows_done, planned)
            return pace.at(time.time())

        with open_worker_pool(
            spec, self.task.sampling_params, workers=settings.workers,
            tensor_parallel_size=settings.tensor_parallel_size, use_cpu=settings.use_cpu,
            ray_address=settings.ray_address, log_dir=log_dir, shard_timeout=settings.timeout,
            on_message=on_message, log_info=log.info, log_warning=log.warning,
        ) as pool:  # fmt: skip
            out_tokens, t0 = 0, time.perf_counter()
            for r in pool.run(feed, count=len(self.shard_keys) * len(group)):
                target, shard = by_job.get(r.key, (first, r.key))
                r = dataclasses.replace(r, key=shard)
                if not r.ok:
                    self._fail(r.key, r.error or "unknown error")
                    model = f" (model {target.name or 'default'})" if len(group) > 1 else ""
                    log.error(f"shard {r.key}{model} failed on worker {r.worker}: {r.error}")
                    self.store.log_shard(r.key, f"completions{model} FAILED on worker {r.worker}: {r.error}")
                    continue
                out_tokens += r.completion_tokens
                self._landed(target, r, progress(r))
        self._jobs_left.clear()
        self._pace_from = time.time()
        elapsed = time.perf_counter() - t0
        log.info(
            f"model {', '.join(t.name or 'default' for t in group)}: {out_tokens} tokens out in {elapsed:.1f} s "
            f"({out_tokens / elapsed if elapsed > 0 else 0:.0f} tok/s including engine start)"
        )

    def _landed(self, target: ModelTarget, r: ShardResult, pace: Progress) -> None:
        self.sink.making(target.completions, r.key)
        comps = self.store.read_frame("completions", r.key, target.name)
        self._record(target.completions, r.key, target.versions["completions"], PROMPTS, {
            "rows": r.rows,
            "errors": r.errors,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "tokens_per_s": round(r.tokens_per_s, 1),
            "rows_per_s": round(r.rows / r.seconds, 2) if r.seconds > 0 else 0.0,
            "seconds": r.seconds,
            "worker": r.worker,
            "gpus": r.gpus or "cpu",
            **({"ray_worker": r.node} if r.node else {}),
            "model": target.spec.model_path if target.spec else "",
            **({"lora_adapter": FilePath(target.adapter)} if target.adapter else {}),
            "model_name": target.name or "default",
            **pooled_metadata(comps),  # a pooling task: its kind and the vector's dimension (or the labels)
            **self._paths("completions", r.key, target.name, "infer"),
            "preview": Markdown(preview_markdown(comps, ["record_id", "response", "finish_reason", "error"])),
            **pace.metadata(),  # the step so far: run_rows_per_s, run_tokens_per_s, run_eta, run_gpu_hours ...
            **({"calibration": r.tuning} if r.tuning else {}),  # knob, width, state, trials (task_settings' calibrate)
        })  # fmt: skip
        if r.tuning and r.tuning.get("state") == "chosen" and r.worker not in self._calibrated:
            self._calibrated.add(r.worker)
            trials = ", ".join(f"{w}: {rate:.0f}" for w, rate in r.tuning.get("trials", {}).items())
            self.log.info(
                f"worker {r.worker}: calibration chose {r.tuning['knob']} {r.tuning['width']} "
                f"(default {r.tuning['default']}); output tok/s by width: {trials}"
            )
        msg = (
            f"shard {r.key}: {r.rows} rows, {r.errors} errors, {r.completion_tokens} tokens out, "
            f"{r.tokens_per_s:.0f} tok/s on worker {r.worker} ({r.gpus or 'cpu'}{', ' + r.node if r.node else ''})"
        )
        self.log.info(f"{msg}; step: {pace.log_text()}")
        self.store.log_shard(r.key, f"completions[{target.name or 'default'}]: " + msg)
        blocked = [
            c for c in self._check(target.completions, r.key, completions_checks(comps, self.checks)) if c.blocks
        ]
        if target.name is None:  # the seed's layout holds the run's model
            held = self._frames.get(r.key) if target.make_answers else self._frames.pop(r.key, None)
            raw, prompts = held or (None, None)
            export_shard(self.store, r.key, with_answers=False, save_text=False, completions=comps, raw=raw,
                         prompts=prompts)  # fmt: skip
            atomic_write_text(self.store.marker_path(r.key), "")  # the seed's marker: inference of it is done
        if blocked:
            self._block(target, r.key, blocked)
        elif target.make_answers:
            self._answer(target, r.key, comps)
        else:
            self._release(r.key)

    def _answer(self, target: ModelTarget, shard: str, comps: pl.DataFrame) -> None:
        self.sink.making(target.answers, shard)
        score = self.task.score
        raw = None
        if score is not None:  # score(answer, org_data) needs the shard's rows
            held = self._frames.get(shard) if target.name is None else None
            raw = held[0] if held is not None else self.store.read_frame("raw", shard)
        df = answers_frame(comps, self.task.extract_answer, score, raw)
        self.store.write_frame("answers", shard, df, target.name)
        if target.name is None:
            raw, prompts = self._frames.pop(shard, (None, None))
            export_shard(self.store, shard, with_answers=True, save_text=self.settings.save_text,
                         completions=comps, answers=df, raw=raw, prompts=prompts)  # fmt: skip
        extracted = int(df["answer"].is_not_null().sum())
        matched, constrained = structured_outputs_matched(comps)
        structured: dict[str, Any] = {}
        if constrained:  # rows generated with structured_outputs: the share whose completion satisfies it
            structured = {"structured_outputs_rows": constrained, "structured_outputs_matched": matched,
                          "structured_outputs_match_rate": round(matched / constrained, 4)}  # fmt: skip
        scored_columns = [c for c in ("score", "n_correct", "majority_answer") if c in df.columns]
        n_err = int(df["error"].is_not_null().sum())
        if n_err:
            self.log.warning(f"shard {shard}: {n_err} row(s) without an answer: {error_summary(df['error'].to_list())}")
        self.store.log_shard(shard, f"answers: {extracted}/{df.height} extracted, {n_err} errors")
        self._record(target.answers, shard, target.versions["answers"], target.completions, {
            "rows": df.height,
            "extracted": extracted,
            "errors": n_err,
            "extraction_rate": round(extracted / df.height, 4) if df.height else 0.0,
            **structured,
            **(score_metadata(df) if score is not None else {}),
            "model_name": target.name or "default",
            **self._paths("answers", shard, target.name, "extract"),
            "preview": Markdown(preview_markdown(df, ["record_id", "answer", *scored_columns, "error"])),
        })  # fmt: skip
        self._check(target.answers, shard, answers_checks(comps, df, self.checks))  # blocking or not: nothing after
        self._release(shard)

    # -- reports and quality checks (shards/quality.py computes the checks) --------------------------------

    def _record(self, ref: AssetRef, shard: str, code_version: str, parent: AssetRef, md: dict[str, Any]) -> None:
        """Report ``ref``'s shard as written now, made from ``parent``'s shard by ``code_version``."""
        self.sink.landed(Landed(ref, shard, code_version, parent, md))

    def _check(self, ref: AssetRef, shard: str, results: list[CheckResult]) -> list[CheckResult]:
        """Report the selected checks' evaluations of ``ref``'s shard, just recorded; return ``results``."""
        chosen = [r for r in results if (ref, r.name) in self.selected_checks]
        if chosen:
            self.sink.checked(Checked(ref, shard, chosen))
        for r in chosen:
            if not r.passed:
                self.store.log_shard(shard, f"check {r.description} [{r.severity}]")
        return results

    def _block(self, target: ModelTarget, shard: str, blocked: list[CheckResult]) -> None:
        """A blocking check on ``shard``'s completions failed with ERROR: no answers, and the shard fails."""
        names = ", ".join(c.name for c in blocked)
        levels = ", ".join(f"{c.error:g}" for c in blocked)
        plural = "s" if len(blocked) > 1 else ""
        why = (  # the same for every shard it blocks, so llm-infer's last line groups them
            f"blocking check{plural} {names} failed with ERROR on {self._name(target.completions)} (share of "
            f'rows above {levels}): its answers were not made; fix the cause or change "checks" in '
            f"{self.task.folder / SETTINGS_FILE}"
        )
        self._fail(shard, why, bad_input=True)
        self.log.error(f"shard {shard}: " + "; ".join(c.description for c in blocked) + ": answers not made")
        self.store.log_shard(shard, f"answers NOT made: blocking check{plural} {names} failed")

    def _checks_alone(self) -> None:
        """Checks selected without their asset (the UI's "Execute" on a check): judge the stored shards."""
        made = {t.completions for t in self.targets if t.make_completions}
        made |= {t.answers for t in self.targets if t.make_answers}
        for ref, check in sorted((k for k in self.selected_checks if k[0] not in made), key=str):
            for shard in self.shard_keys:
                if not self.store.has(ref.asset, shard, ref.model):
                    continue
                comps = self.store.read_frame("completions", shard, ref.model)
                if ref.asset == "completions":
                    results = completions_checks(comps, self.checks)
                else:
                    results = answers_checks(comps, self.store.read_frame("answers", shard, ref.model), self.checks)
                self._check(ref, shard, [r for r in results if r.name == check])


def _summary(why: str) -> str:
    """Why a shard failed, on one line: the first line, and the last line of a log tail that follows it."""
    lines = [ln.strip() for ln in why.splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else "unknown error"
    return f"{lines[0]} ... {lines[-1]}"


def _prime(jobs: Iterator[ShardJob]) -> Iterator[ShardJob]:
    """``jobs`` with its first item already made."""
    first = next(jobs, None)
    if first is None:
        return iter(())

    def chained() -> Iterator[ShardJob]:
        yield first
        yield from jobs

    return chained()
