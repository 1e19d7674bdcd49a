"""Sampling parameters: defaults, per-task overrides, validation, and the mapping to HF ``generate``.

The seed passed ``default_sampling_params.json`` updated key by key with a task's ``sampling_params.json``
straight into vLLM's ``SamplingParams``, so a typo (``"temprature"``) or a string (``"32"``) only blew up
deep inside a worker, or was silently ignored. Here every key and value is checked when the task loads,
and the error names the file, the key and the fix. The names and meanings are vLLM's, for both backends;
the HF backend refuses keys it cannot honour instead of quietly ignoring them.

Pure logic: no torch, no transformers.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from llm_infer_dagster.errors import TaskConfigError

__all__ = [
    "BUILTIN_DEFAULTS",
    "HF_SUPPORTED_KEYS",
    "SAMPLING_FILE",
    "SAMPLING_KEYS",
    "check_hf_supported",
    "load_sampling_params",
    "normalize_stop",
    "to_hf_generate_kwargs",
    "validate_sampling_params",
]

#: The seed's ``default_sampling_params.json``; used when no defaults file exists.
BUILTIN_DEFAULTS: dict[str, Any] = {"temperature": 1.0, "max_tokens": 32, "top_p": 0.9, "top_k": 50}

#: The file a task folder may hold to override the defaults.
SAMPLING_FILE = "sampling_params.json"

# Type specs: each key maps to a tuple of accepted JSON kinds.
#   "int"       an integer (never a bool)
#   "float"     a number (int or float, never a bool); stored as float
#   "bool"      true / false
#   "str"       a string
#   "null"      null
#   "list[str]" a list of strings
#   "list[int]" a list of integers (never bools)
TypeSpec = tuple[str, ...]

#: vLLM ``SamplingParams`` fields a task may set, with the JSON kinds each accepts.
SAMPLING_KEYS: dict[str, TypeSpec] = {
    "n": ("int",),
    "presence_penalty": ("float",),
    "frequency_penalty": ("float",),
    "repetition_penalty": ("float",),
    "temperature": ("float",),
    "top_p": ("float",),
    "top_k": ("int",),
    "min_p": ("float",),
    "seed": ("int", "null"),
    "stop": ("str", "list[str]", "null"),
    "stop_token_ids": ("list[int]",),
    "ignore_eos": ("bool",),
    "max_tokens": ("int",),
    "min_tokens": ("int",),
    "logprobs": ("int", "null"),
    "prompt_logprobs": ("int", "null"),
    "skip_special_tokens": ("bool",),
    "spaces_between_special_tokens": ("bool",),
    "include_stop_str_in_output": ("bool",),
    "bad_words": ("list[str]",),
}

#: Keys the HF backend implements. The others are accepted only at their neutral value (see below).
HF_SUPPORTED_KEYS: frozenset[str] = frozenset(
    {
        "n",
        "repetition_penalty",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "stop_token_ids",
        "ignore_eos",
        "max_tokens",
        "min_tokens",
        "skip_special_tokens",
        "include_stop_str_in_output",
    }
)

# Values at which an HF-unsupported key changes nothing, so a shared defaults file may spell them out.
_HF_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logprobs": (None,),
    "prompt_logprobs": (None,),
    "bad_words": ([],),
    "spaces_between_special_tokens": (True,),
}

_KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "null": "null",
    "list[str]": "a list of strings",
    "list[int]": "a list of integers",
}

# vLLM's SamplingParams defaults, for keys the mapping to HF needs when a task leaves them out.
_VLLM_DEFAULTS: dict[str, Any] = {
    "n": 1,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "max_tokens": 16,
    "min_tokens": 0,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _matches(value: Any, kind: str) -> bool:
    if kind == "int":
        return _is_int(value)
    if kind == "float":
        return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "null":
        return value is None
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "list[int]":
        return isinstance(value, list) and all(_is_int(v) for v in value)
    raise AssertionError(f"unknown type kind {kind!r}")


def _describe(spec: TypeSpec) -> str:
    words = [_KIND_WORDS[k] for k in spec]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _show(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


# Allowed ranges (vLLM's own checks): key -> (test, what the value must be).
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: v >= 1, "at least 1"),
    "max_tokens": (lambda v: v >= 1, "at least 1"),
    "min_tokens": (lambda v: v >= 0, "at least 0"),
    "temperature": (lambda v: v >= 0, "at least 0 (0 means greedy)"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": (lambda v: v in (-1, 0) or v >= 1, "-1 or 0 (off) or at least 1"),
    "min_p": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "repetition_penalty": (lambda v: v > 0, "greater than 0 (1 means off)"),
    "presence_penalty": (lambda v: -2 <= v <= 2, "in [-2, 2]"),
    "frequency_penalty": (lambda v: -2 <= v <= 2, "in [-2, 2]"),
    "logprobs": (lambda v: v >= 0, "at least 0"),
    "prompt_logprobs": (lambda v: v >= 0, "at least 0"),
    "stop_token_ids": (lambda v: all(i >= 0 for i in v), "a list of non-negative token ids"),
}


def _range_problem(key: str, value: Any) -> str | None:
    """Why ``value`` (already of the right type) is out of range for ``key``; None when it is fine."""
    if value is None or key not in _RANGES:
        return None
    ok, need = _RANGES[key]
    return None if ok(value) else f'"{key}" must be {need}, got {_show(value)}'


def validate_sampling_params(params: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Check keys, types and ranges of one parameter mapping; return a normalised copy.

    ``source`` names where the values came from (a file path) and starts every error message.
    Numbers for float keys come back as floats, so ``1`` and ``1.0`` fingerprint the same.
    """
    if not isinstance(params, Mapping):
        raise TaskConfigError(f"{source}: sampling parameters must be a JSON object, got {type(params).__name__}")
    out: dict[str, Any] = {}
    for key, value in params.items():
        spec = SAMPLING_KEYS.get(key)
        if spec is None:
            close = difflib.get_close_matches(str(key), SAMPLING_KEYS, n=1, cutoff=0.6)
            hint = f'did you mean "{close[0]}"? ' if close else ""
            raise TaskConfigError(
                f'{source}: unknown sampling key "{key}" ({hint}valid keys: {", ".join(SAMPLING_KEYS)})'
            )
        if not any(_matches(value, kind) for kind in spec):
            raise TaskConfigError(f'{source}: "{key}" must be {_describe(spec)}, got {_show(value)}')
        problem = _range_problem(key, value)
        if problem:
            raise TaskConfigError(f"{source}: {problem}")
        if spec == ("float",):
            value = float(value)
        out[key] = value
    return out


def _check_combination(params: Mapping[str, Any], source: str) -> None:
    """Constraints between keys, checked on the merged parameters."""
    max_tokens = params.get("max_tokens")
    min_tokens = params.get("min_tokens", 0)
    if max_tokens is not None and min_tokens > max_tokens:
        raise TaskConfigError(f'{source}: "min_tokens" ({min_tokens}) must not exceed "max_tokens" ({max_tokens})')
    if params.get("n", 1) > 1 and params.get("temperature", 1.0) == 0:
        # Greedy decoding gives n identical samples; vLLM refuses it outright, so refuse it for every engine.
        raise TaskConfigError(
            f'{source}: "n" = {params["n"]} with "temperature" 0 would give {params["n"]} identical greedy samples; '
            'set "temperature" above 0 or "n" to 1'
        )


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TaskConfigError(f"{path}: cannot read sampling parameters: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise TaskConfigError(
            f"{path}: sampling parameters must be a JSON object "
            f'like {{"temperature": 0}}, got a JSON {type(data).__name__}'
        )
    return data


def load_sampling_params(defaults_path: Path | None, task_path: Path | None) -> dict[str, Any]:
    """Merge a task's sampling parameters over the defaults, key by key, and validate both.

    ``defaults_path``: the defaults JSON; :data:`BUILTIN_DEFAULTS` when None or absent (the file replaces
    the built-ins, it is not merged with them). ``task_path``: the task's ``sampling_params.json`` or the
    task folder holding it; optional, like in the seed. Raises :class:`TaskConfigError` naming the file
    and key at fault.
    """
    if defaults_path is not None and Path(defaults_path).is_file():
        defaults_source = str(defaults_path)
        defaults = validate_sampling_params(_read_json_object(Path(defaults_path)), defaults_source)
    else:
        defaults_source = "built-in default sampling parameters"
        defaults = validate_sampling_params(BUILTIN_DEFAULTS, defaults_source)

    task: dict[str, Any] = {}
    task_source = defaults_source
    if task_path is not None:
        task_file = Path(task_path)
        if task_file.is_dir():
            task_file = task_file / SAMPLING_FILE
        if task_file.is_file():
            task_source = str(task_file)
            task = validate_sampling_params(_read_json_object(task_file), task_source)

    merged = {**defaults, **task}
    _check_combination(merged, task_source if task else defaults_source)
    return merged


def normalize_stop(params: Mapping[str, Any]) -> list[str]:
    """``stop`` as a list: vLLM accepts a string, a list or null; empty strings would stop at once."""
    stop = params.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    return [s for s in stop if s]


def check_hf_supported(params: Mapping[str, Any]) -> None:
    """Refuse keys the HF backend cannot honour, rather than silently sampling differently from vLLM.

    Unsupported keys pass when set to their neutral value (``presence_penalty: 0``, ``logprobs: null``).
    """
    bad = [
        key
        for key, value in params.items()
        if key not in HF_SUPPORTED_KEYS and not (key in _HF_NEUTRAL and value in _HF_NEUTRAL[key])
    ]
    if bad:
        names = ", ".join(f'"{k}"' for k in bad)
        raise TaskConfigError(
            f"sampling parameters {names} are not supported by the HF backend; "
            f"use --model_type vllm or drop {'it' if len(bad) == 1 else 'them'} from sampling_params.json "
            f"(HF supports: {', '.join(sorted(HF_SUPPORTED_KEYS))})"
        )


def to_hf_generate_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """Translate vLLM-style parameters to ``model.generate`` keyword arguments.

    Missing keys take vLLM's ``SamplingParams`` defaults (top_p 1, top_k off, max_tokens 16), not the
    model's ``generation_config``, so both backends sample the same way for the same file.

    - temperature 0 -> greedy (``do_sample=False``, no temperature/top_p/top_k/min_p). HF refuses
      ``num_return_sequences > 1`` without sampling, while vLLM returns ``n`` identical samples, so
      greedy leaves ``num_return_sequences`` out and the engine repeats the one sample ``n`` times.
    - top_k -1 or 0 (vLLM: off) -> HF ``top_k=0`` (HF's own unset default would be 50).
    - max_tokens -> max_new_tokens, min_tokens -> min_new_tokens, n -> num_return_sequences.

    Handled by the engine, not here: ``stop`` (``stop_strings`` plus cutting the text), ``stop_token_ids``
    and ``ignore_eos`` (the ``eos_token_id`` list), ``seed`` (``torch.manual_seed``),
    ``skip_special_tokens`` and ``include_stop_str_in_output`` (decoding).
    """
    p = {**_VLLM_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    kwargs: dict[str, Any] = {
        "max_new_tokens": int(p["max_tokens"]),
        "repetition_penalty": float(p["repetition_penalty"]),
    }
    if p["min_tokens"]:
        kwargs["min_new_tokens"] = int(p["min_tokens"])
    if float(p["temperature"]) == 0.0:
        kwargs["do_sample"] = False
        return kwargs
    kwargs.update(
        do_sample=True,
        temperature=float(p["temperature"]),
        top_p=float(p["top_p"]),
        top_k=max(int(p["top_k"]), 0),
        num_return_sequences=int(p["n"]),
    )
    if p["min_p"]:
        kwargs["min_p"] = float(p["min_p"])
    return kwargs
