"""Prefix-aware planning (issue 24): rows in file order vs planned, on vLLM with its prefix cache on.

The task: ``--docs`` documents (``--doc-lines`` sentences of the tiny model's corpus each, about 300-600
tokens), each asked ``--questions`` questions behind one shared instruction. The input is grouped by
question type, as a real dataset would be (every document's question 1, then every question 2, ...), so in
file order the rows of one document sit ``--docs`` rows apart. Short greedy outputs (``--max-tokens``) make
prefill dominate. Each variant runs in its own fresh process; engine start-up is not timed:

  bare-nocache   ``LLM.generate(all prompts in file order)`` with ``enable_prefix_caching=False`` (reference)
  bare           ``LLM.generate(all prompts in file order)``, prefix caching on (vLLM's default)
  bare-planned   the same fed the planned order (every document's rows together): the ceiling
  platform-off   the platform's engine level: ``VLLMEngine`` fed ``--shard-size``-row shards through its
                 submit/step loop the way a worker feeds it (a shard queued while ``wants_more()``), shards in
                 file order, ``prefix_order=False``
  platform-on    the same with planning: shards in ``plan_order`` of their prefix signatures, each shard's
                 requests queued in ``submit_order`` (``prefix_order=True``)
  llm-infer-off  the platform end to end: ``python -m llm_infer_dagster --model_type vllm --use_cpu`` (Dagster,
                 the worker process, shards written and recorded) on a task folder written into a temporary
                 dir: one JSON Lines file per question (in file order), ``--shard_size`` ``--shard-size``, so
                 shards are cut per question file as above; ``task_settings.json`` ``"prefix_planning": false``
  llm-infer-on   the same with ``"prefix_planning": true``

The llm-infer variants pass the same engine arguments through ``--model_args`` (and ``--dtype float32
--max_model_len 2048``) and are timed in the run's Dagster event log, from the first "model loaded" to the last
completions shard recorded (``vllm_platform_vs_bare.llm_infer_spans``, as ``vs_ray_data_llm.py`` and ``gpu.py``
time the platform); their token counts are the completions Parquet's ``prompt_tokens`` + ``completion_tokens``,
their responses read back from the completions and prompts Parquet shards. The worker's vLLM counters are
read from outside through prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a fresh dir per
run, set in the command's environment: the worker's counters are then kept in files there); if none are found
the hit rate shows as n/a. Their JSON lines also give the engine load time, the whole command's wall time
(``job_s``) and the order the completions shards were recorded in (``shard_order``: planning reorders it).

Prefix cache hit rate = vLLM's ``vllm:prompt_tokens_cached`` / ``vllm:prompt_tokens`` counters
(``LLM.get_metrics()``, with ``disable_log_stats=False``). Throughput: prompt+output tokens per second (and
output tokens per second) over the timed generation. The KV cache (``--kv-cache-mib``) is sized below the
corpus, as with any real corpus larger than the cache: what is evicted before its document's next question
comes is what file order loses.

    python benchmarks/prefix_planning.py [--docs 48] [--questions 4] [--doc-lines 28] [--shard-size 16]
        [--max-tokens 8] [--kv-cache-mib 96] [--hidden-size 512] [--layers 4] [--repeats 1]
        [--variants bare-nocache,bare,bare-planned,platform-off,platform-on,llm-infer-off,llm-infer-on]
        [--model-dir DIR]

The llm-infer variants are not in the default ``--variants``: name them. Prints one JSON line per variant run,
then a markdown table, whether every variant's greedy outputs equal the first one's, and llm-infer-on's against
llm-infer-off's. Everything runs under ``__main__`` (vLLM starts its engine core with spawn).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_platform_vs_bare import _free_port, llm_infer_spans  # noqa: E402

DEFAULT_VARIANTS = ("bare-nocache", "bare", "bare-planned", "platform-off", "platform-on")
VARIANTS = (*DEFAULT_VARIANTS, "llm-infer-off", "llm-infer-on")
COUNTERS = ("vllm:prompt_tokens", "vllm:prompt_tokens_cached", "vllm:generation_tokens")
TASK = "prefix_bench"
TASK_CONFIG = '''"""benchmarks/prefix_planning.py's prompts as a task: one JSON Lines file per question."""

import json
import os


def get_file_list(input_path):
    return sorted(os.path.join(input_path, f) for f in os.listdir(input_path) if f.endswith(".jsonl"))


def read_file(file_path):
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(org_data):
    return org_data["prompt"]


def extract_answer(model_response):
    return None
'''
QUESTIONS = (
    "Summarise the document in one sentence.",
    "Which place does the document mention first?",
    "What is the main subject of the document?",
    "Name one number that appears in the document.",
    "Is the tone of the document positive or negative?",
    "Who is the document written for?",
)
INSTRUCTION = "You are a careful reader. Read the document below and answer the question after it briefly."


def make_rows(docs: int, questions: int, doc_lines: int, seed: int) -> list[str]:
    """Prompts in file order: grouped by question, then by document."""
    from llm_infer_dagster.testing.tiny_model import corpus

    lines = corpus()
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(lines) for _ in range(doc_lines)) for _ in range(docs)]
    qs = [QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" ({i})") for i in range(questions)]
    return [f"{INSTRUCTION}\n\nDocument {d}:\n{texts[d]}\n\nQuestion: {q}\nAnswer:" for q in qs for d in range(docs)]


def shards_of(prompts: list[str], shard_size: int, files: int) -> list[list[int]]:
    """Row indices of each shard: each question file cut into contiguous ``shard_size`` chunks."""
    per_file = len(prompts) // files
    out = []
    for f in range(files):
        rows = list(range(f * per_file, (f + 1) * per_file))
        out += [rows[i : i + shard_size] for i in range(0, len(rows), shard_size)]
    return out


def _metrics(llm: Any) -> dict[str, float]:
    got: dict[str, float] = {}
    for m in llm.get_metrics():
        if m.name in COUNTERS:
            got[m.name.split(":")[1]] = got.get(m.name.split(":")[1], 0) + float(m.value)
    return got


def _multiprocess_metrics(path: Path) -> dict[str, float]:
    """vLLM's counters as a process wrote them under ``PROMETHEUS_MULTIPROC_DIR`` (summed over processes)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    got: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name in COUNTERS:
            total = sum(x.value for x in metric.samples if x.name == metric.name + "_total")
            got[metric.name.split(":")[1]] = got.get(metric.name.split(":")[1], 0) + total
    return got


def _completions_order(dagster_home: Path) -> list[str]:
    """The shards' keys in the order their completions were recorded: planning on reorders them."""
    from dagster import DagsterEventType, DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home)))
    keys = []
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
            event = entry.dagster_event
            if event and event.asset_key and event.asset_key.path[-1] == "completions":
                keys.append(str(event.partition))
    return keys


def _llm_infer(cfg: dict[str, Any], prompts: list[str], engine_args: dict[str, Any],
               sampling: dict[str, Any]) -> tuple[float, dict[str, float], dict[int, str], dict[str, Any]]:  # fmt: skip
    """``llm-infer`` over ``prompts`` (one file per question); (window s, token counts, responses, extra)."""
    import polars as pl

    work = Path(cfg["out"]).with_suffix("")
    configs, data, out, prom = work / "tasks", work / "data", work / "out", work / "prometheus"
    folder = configs / TASK
    for d in (folder, data, prom):
        d.mkdir(parents=True, exist_ok=True)
    (folder / "task_config.py").write_text(TASK_CONFIG)
    (folder / "sampling_params.json").write_text(json.dumps(sampling) + "\n")
    settings = {"prefix_planning": cfg["variant"] == "llm-infer-on"}
    (folder / "task_settings.json").write_text(json.dumps(settings) + "\n")
    docs = cfg["docs"]
    for q in range(cfg["questions"]):
        with (data / f"q{q:03d}.jsonl").open("w", encoding="utf-8") as f:
            for p in prompts[q * docs : (q + 1) * docs]:
                f.write(json.dumps({"prompt": p}) + "\n")
    cmd = [
        sys.executable, "-m", "llm_infer_dagster", "--task_name", TASK, "--config_path", str(configs),
        "--input_path", str(data), "--output_path", str(out), "--model_path", cfg["model"], "--model_type", "vllm",
        "--use_cpu", "--dtype", "float32", "--max_model_len", str(cfg["max_model_len"]),
        "--model_args", json.dumps(engine_args), "--workers", "1", "--shard_size", str(cfg["shard_size"]),
        "--no_progress",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_INFER_", "DAGSTER_HOME"))}
    env.update(DAGSTER_HOME=str(out / ".dagster"), PROMETHEUS_MULTIPROC_DIR=str(prom), VLLM_PORT=str(_free_port()))
    log = work / "llm-infer.log"
    start = time.perf_counter()
    with log.open("w") as fh:
        code = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - start
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"llm-infer exited {code} ({log}):\n{tail}")
    spans = llm_infer_spans(out / ".dagster")
    if len(spans) != 1:
        raise RuntimeError(f"{len(spans)} runs loaded the model, expected 1 ({log})")
    first_loaded, _, last_shard, _, load_s = spans[0]

    def frames(asset: str) -> pl.DataFrame:
        return pl.concat([pl.read_parquet(p) for p in sorted((out / TASK / asset).glob("*.parquet"))])

    comps = frames("completions").join(frames("prompts").select("record_id", "prompt"), on="record_id")
    errors = comps["error"].drop_nulls()
    if comps.height != len(prompts) or errors.len():
        raise RuntimeError(f"{comps.height} completions for {len(prompts)} prompts, {errors.len()} with errors")
    index = {p: i for i, p in enumerate(prompts)}
    responses = {index[p]: r or "" for p, r in zip(comps["prompt"], comps["response"], strict=True)}
    counts = {"prompt_tokens": float(comps["prompt_tokens"].sum()),
              "generation_tokens": float(comps["completion_tokens"].sum())}  # fmt: skip
    vllm = _multiprocess_metrics(prom)
    if vllm.get("prompt_tokens"):
        counts["prompt_tokens_cached"] = vllm.get("prompt_tokens_cached", 0.0)
    extra = {"load_s": load_s, "job_s": wall, "shards": len(list((out / TASK / "completions").glob("*.parquet"))),
             "vllm_counters": vllm or None, "shard_order": _completions_order(out / ".dagster")}  # fmt: skip
    return last_shard - first_loaded, counts, responses, extra


def _child(cfg: dict[str, Any]) -> dict[str, Any]:
    from llm_infer_dagster.engines.prefix_order import plan_order, prefix_signature

    prompts = make_rows(cfg["docs"], cfg["questions"], cfg["doc_lines"], cfg["seed"])
    shards = shards_of(prompts, cfg["shard_size"], cfg["questions"])
    variant = cfg["variant"]
    engine_args = {
        "enforce_eager": True,
        "kv_cache_memory_bytes": cfg["kv_cache_mib"] << 20,
        "max_num_seqs": cfg["max_num_seqs"],
        "disable_log_stats": False,
        "enable_prefix_caching": variant != "bare-nocache",
    }
    sampling = {"temperature": 0.0, "max_tokens": cfg["max_tokens"], "ignore_eos": True}
    responses: dict[int, str] = {}
    extra: dict[str, Any] = {}
    if variant.startswith("llm-infer"):
        seconds, metrics, responses, extra = _llm_infer(cfg, prompts, engine_args, sampling)
    elif variant.startswith("bare"):
        from vllm import LLM, SamplingParams

        llm = LLM(model=cfg["model"], dtype="float32", max_model_len=cfg["max_model_len"], **engine_args)
        order = list(range(len(prompts)))
        if variant == "bare-planned":
            order = sorted(order, key=lambda i: prompts[i])  # every document's rows together
        start = time.perf_counter()
        outs = llm.generate([prompts[i] for i in order], SamplingParams(**sampling), use_tqdm=False)
        seconds = time.perf_counter() - start
        for i, o in zip(order, outs, strict=True):
            responses[i] = o.outputs[0].text
        metrics = _metrics(llm)
        llm.llm_engine.engine_core.shutdown()
    else:
        from llm_infer_dagster.engines.vllm import VLLMEngine

        planned = variant == "platform-on"
        engine = VLLMEngine(
            cfg["model"], device="cpu", dtype="float32", max_model_len=cfg["max_model_len"],
            engine_args=engine_args, prefix_order=planned,
        )  # fmt: skip
        order = list(range(len(shards)))
        plan_s = 0.0
        start = time.perf_counter()
        if planned:
            order = plan_order([prefix_signature([prompts[i] for i in rows]) for rows in shards])
            plan_s = time.perf_counter() - start
        queue = list(order)
        pending = 0
        while queue or pending:
            while queue and engine.wants_more():  # what the worker does: queue shards while the batch has room
                k = queue.pop(0)
                engine.submit(str(k), [prompts[i] for i in shards[k]], sampling)
                pending += 1
            for tag, completions in engine.step():
                pending -= 1
                for i, c in zip(shards[int(tag)], completions, strict=True):
                    assert c.error is None, c.error
                    responses[i] = c.response or ""
        seconds = time.perf_counter() - start
        metrics = _metrics(engine._llm)
        engine.close()
    prompt_tokens = metrics.get("prompt_tokens", 0.0)
    out_tokens = metrics.get("generation_tokens", 0.0)
    cached = metrics.get("prompt_tokens_cached")  # None: the worker's counters were not reachable
    result = {
        "variant": variant,
        "seconds": seconds,
        "prompts": len(prompts),
        "prompt_tokens": prompt_tokens,
        "output_tokens": out_tokens,
        "cached_tokens": cached,
        "hit_rate": cached / prompt_tokens if cached is not None and prompt_tokens else None,
        "tokens_per_s": (prompt_tokens + out_tokens) / seconds,
        "output_tokens_per_s": out_tokens / seconds,
        "responses": [responses[i] for i in range(len(prompts))],
        **extra,
    }
    if variant.startswith("platform"):
        result["plan_s"] = plan_s
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=48)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--doc-lines", type=int, default=28)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--kv-cache-mib", type=int, default=96)
    ap.add_argument("--hidden-size", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    ap.add_argument("--model-dir", default=".models/bench-prefix")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        cfg = json.loads(Path(args.child).read_text())
        Path(cfg["out"]).write_text(json.dumps(_child(cfg)))
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        sys.exit(f"--variants: unknown {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    if args.docs % args.shard_size and args.shard_size < args.docs:
        print(f"note: {args.docs} docs per file is not a multiple of --shard-size {args.shard_size}", file=sys.stderr)
    from llm_infer_dagster.testing.tiny_model import build_tiny_model

    model = build_tiny_model(
        Path(args.model_dir), hidden_size=args.hidden_size, num_layers=args.layers,
        num_heads=max(1, args.hidden_size // 64), max_position_embeddings=2048,
    )  # fmt: skip
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    prompts = make_rows(args.docs, args.questions, args.doc_lines, args.seed)
    lens = [len(tok(p)["input_ids"]) for p in prompts]
    doc_lens = [len(tok(p.split("Document ", 1)[1].split("\n\nQuestion", 1)[0])["input_ids"]) for p in prompts]
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": os.getloadavg(), "prompts": len(prompts), "prompt_tokens_mean": statistics.mean(lens),
        "doc_tokens_min_max": [min(doc_lens), max(doc_lens)], "corpus_tokens": sum(doc_lens) // args.questions,
    }))  # fmt: skip
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
                cfg = {**vars(args), "variant": v, "model": str(model), "max_model_len": 2048,
                       "out": f"{tmp}/{v}-{r}.json"}  # fmt: skip
                (Path(tmp) / "cfg.json").write_text(json.dumps(cfg))
                env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "TQDM_DISABLE": "1"}
                subprocess.run([sys.executable, __file__, "--child", f"{tmp}/cfg.json"], check=True, env=env,
                               stdout=subprocess.DEVNULL)  # fmt: skip
                res = json.loads(Path(cfg["out"]).read_text())
                res["load"] = os.getloadavg()[0]
                results[v].append(res)
                print(json.dumps({k: v for k, v in res.items() if k != "responses"}), flush=True)
    ref = next(iter(results.values()))[0]["responses"]
    same = {v: all(x["responses"] == ref for x in rs) for v, rs in results.items()}
    print(f"\nload average after: {os.getloadavg()}; greedy outputs identical to {variants[0]}: {same}")
    if "llm-infer-off" in results and "llm-infer-on" in results:
        off = results["llm-infer-off"][0]["responses"]
        on_same = all(x["responses"] == off for x in results["llm-infer-on"])
        print(f"greedy outputs of llm-infer-on identical to llm-infer-off: {on_same}")
    print()
    best = {v: max(rs, key=lambda x: x["tokens_per_s"]) for v, rs in results.items()}
    print("| variant | seconds | prompt+output tok/s | output tok/s | prefix cache hit rate |")
    print("|---|---:|---:|---:|---:|")
    for v, b in best.items():
        print(f"| {v} | {b['seconds']:.2f} | {b['tokens_per_s']:,.0f} | {b['output_tokens_per_s']:,.1f} "
              f"| {'n/a' if b['hit_rate'] is None else format(b['hit_rate'], '.1%')} |")  # fmt: skip
    if "bare" in best and "platform-on" in best:
        ratio = best["platform-on"]["tokens_per_s"] / best["bare"]["tokens_per_s"]
        print(f"\nplatform-on / bare (file order): {ratio:.2f}x")
    if "llm-infer-off" in best and "llm-infer-on" in best:
        ratio = best["llm-infer-on"]["tokens_per_s"] / best["llm-infer-off"]["tokens_per_s"]
        print(f"llm-infer-on / llm-infer-off: {ratio:.2f}x")


if __name__ == "__main__":
    main()
