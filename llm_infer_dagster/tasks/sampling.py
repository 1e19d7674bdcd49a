"""Sampling parameters: defaults, per-task overrides and their validation.

The seed passed ``default_sampling_params.json`` updated key by key with a task's ``sampling_params.json``
straight into vLLM's ``SamplingParams``, so a typo (``"temprature"``) or a string (``"32"``) only blew up
deep inside a worker, or was silently ignored. Here every key and value is checked against
:class:`TaskSamplingParams` (a pydantic model of the vLLM fields a task may set) when the task loads, and
the error names the file, the key and the fix. The names and meanings are vLLM's, for both backends; what
the HF backend can honour, and the mapping to HF ``generate``, is the engine's
(``llm_infer_dagster.engines.hf_sampling``).

Pure logic: no torch, no transformers, no Dagster, no engine.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.tasks.structured import validate_structured_outputs

__all__ = [
    "BUILTIN_DEFAULTS",
    "SAMPLING_FILE",
    "SAMPLING_KEYS",
    "TaskSamplingParams",
    "check_combination",
    "load_sampling_params",
    "validate_sampling_params",
]

#: The seed's ``default_sampling_params.json``; used when no defaults file exists.
BUILTIN_DEFAULTS: dict[str, Any] = {"temperature": 1.0, "max_tokens": 32, "top_p": 0.9, "top_k": 50}

#: The file a task folder may hold to override the defaults.
SAMPLING_FILE = "sampling_params.json"


@dataclass(frozen=True)
class _Says:
    """How an error message words a field: the JSON kinds it takes, and the range (vLLM's own checks)."""

    kind: str
    need: str | None = None


def _top_k_on_or_off(value: int) -> int:
    if value < -1:
        raise ValueError("top_k below -1")
    return value


_TokenId = Annotated[int, Field(ge=0)]
_Count = Annotated[int, Field(ge=0)]
_Penalty = Annotated[float, Field(ge=-2, le=2), _Says("a number", "in [-2, 2]")]


class TaskSamplingParams(BaseModel):
    """The fields of vLLM's ``SamplingParams`` a task may set, with vLLM's defaults and bounds.

    Strict JSON types: an integer is never a bool or a float (``1.0`` is not an integer); a number field takes
    integers and stores them as floats, so ``1`` and ``1.0`` fingerprint the same; NaN and infinities are refused.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    n: Annotated[int, Field(ge=1), _Says("an integer", "at least 1")] = 1
    presence_penalty: _Penalty = 0.0
    frequency_penalty: _Penalty = 0.0
    repetition_penalty: Annotated[float, Field(gt=0), _Says("a number", "greater than 0 (1 means off)")] = 1.0
    temperature: Annotated[float, Field(ge=0), _Says("a number", "at least 0 (0 means greedy)")] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1), _Says("a number", "in (0, 1]")] = 1.0
    top_k: Annotated[int, AfterValidator(_top_k_on_or_off), _Says("an integer", "-1 or 0 (off) or at least 1")] = 0
    min_p: Annotated[float, Field(ge=0, le=1), _Says("a number", "in [0, 1]")] = 0.0
    seed: Annotated[int | None, _Says("an integer or null")] = None
    stop: Annotated[str | list[str] | None, _Says("a string, a list of strings or null")] = None
    stop_token_ids: Annotated[list[_TokenId], _Says("a list of integers", "a list of non-negative token ids")] = Field(
        default_factory=list
    )
    ignore_eos: Annotated[bool, _Says("true or false")] = False
    max_tokens: Annotated[int, Field(ge=1), _Says("an integer", "at least 1")] = 16
    min_tokens: Annotated[int, Field(ge=0), _Says("an integer", "at least 0")] = 0
    logprobs: Annotated[_Count | None, _Says("an integer or null", "at least 0")] = None
    prompt_logprobs: Annotated[_Count | None, _Says("an integer or null", "at least 0")] = None
    skip_special_tokens: Annotated[bool, _Says("true or false")] = True
    spaces_between_special_tokens: Annotated[bool, _Says("true or false")] = True
    include_stop_str_in_output: Annotated[bool, _Says("true or false")] = False
    bad_words: Annotated[list[str], _Says("a list of strings")] = Field(default_factory=list)
    # Checked by tasks/structured.py (one of json / regex / choice / grammar), not by this model.
    structured_outputs: Annotated[dict[str, Any] | None, _Says("an object or null")] = None


#: The keys a sampling file may hold, in vLLM's order (the order error messages list them in).
SAMPLING_KEYS: tuple[str, ...] = tuple(TaskSamplingParams.model_fields)

# pydantic error types that mean "right type, out of range"; every other error is a wrong type.
_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal", "value_error"})


def _says(key: str) -> _Says:
    return next(m for m in TaskSamplingParams.model_fields[key].metadata if isinstance(m, _Says))


def _show(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _unknown_key(key: str, source: str) -> TaskConfigError:
    close = difflib.get_close_matches(key, SAMPLING_KEYS, n=1, cutoff=0.6)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    return TaskConfigError(f'{source}: unknown sampling key "{key}" ({hint}valid keys: {", ".join(SAMPLING_KEYS)})')


def _one_line(exc: ValidationError, params: Mapping[str, Any], source: str) -> TaskConfigError:
    """The first problem, in the file's key order, as one line naming the file, the key and what it takes."""
    order: dict[int | str, int] = {key: i for i, key in enumerate(params)}  # keyed like a pydantic loc
    errors = sorted(exc.errors(), key=lambda e: order.get(e["loc"][0] if e["loc"] else "", len(order)))
    err = errors[0]
    key = str(err["loc"][0]) if err["loc"] else ""
    if err["type"] == "extra_forbidden" or key not in TaskSamplingParams.model_fields:
        return _unknown_key(key, source)
    says = _says(key)
    # A range problem only when the value has the right type: a union's other members report type errors.
    range_only = all(e["type"] in _RANGE_ERRORS for e in errors if e["loc"] and e["loc"][0] == key)
    need = says.need if range_only and says.need else says.kind
    return TaskConfigError(f'{source}: "{key}" must be {need}, got {_show(params[key])}')


def validate_sampling_params(params: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Check keys, types and ranges of one parameter mapping; return a normalised copy.

    ``source`` names where the values came from (a file path) and starts every error message.
    Numbers for float keys come back as floats, so ``1`` and ``1.0`` fingerprint the same. Only the keys
    given come back, in the order given.
    """
    if not isinstance(params, Mapping):
        raise TaskConfigError(f"{source}: sampling parameters must be a JSON object, got {type(params).__name__}")
    for key in params:
        if not isinstance(key, str):
            raise _unknown_key(str(key), source)
    rest = {k: v for k, v in params.items() if k != "structured_outputs"}
    try:
        model = TaskSamplingParams.model_validate(rest)
    except ValidationError as exc:
        raise _one_line(exc, rest, source) from None
    out = {key: getattr(model, key) for key in rest}
    if "structured_outputs" in params:  # in the file's key order
        out = {key: out.get(key) for key in params}
        out["structured_outputs"] = validate_structured_outputs(params["structured_outputs"], source)
    return out


#: vLLM's cap on ``n`` (``vllm.envs``), and the variable that raises it.
MAX_N_ENV = "VLLM_MAX_N_SEQUENCES"
_VLLM_MAX_N = 16384


def max_samples() -> int:
    """The most samples per prompt (``n``) vLLM takes: 16384, or ``VLLM_MAX_N_SEQUENCES`` where it is set."""
    try:
        return int(os.environ.get(MAX_N_ENV, _VLLM_MAX_N))
    except ValueError:
        return _VLLM_MAX_N


def check_combination(params: Mapping[str, Any], source: str) -> None:
    """Constraints between keys, checked on the merged parameters."""
    max_tokens = params.get("max_tokens")
    min_tokens = params.get("min_tokens", 0)
    if max_tokens is not None and min_tokens > max_tokens:
        raise TaskConfigError(f'{source}: "min_tokens" ({min_tokens}) must not exceed "max_tokens" ({max_tokens})')
    n, most = params.get("n", 1), max_samples()
    if n > most:  # vLLM refuses it at the first request, after its engine started; refuse it for every engine
        raise TaskConfigError(
            f'{source}: "n" = {n} is above the {most} samples per prompt vLLM allows ({MAX_N_ENV}); lower "n"'
        )
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


def load_sampling_params(
    defaults_path: Path | None, task_path: Path | None, builtin: Mapping[str, Any] = BUILTIN_DEFAULTS
) -> dict[str, Any]:
    """Merge a task's sampling parameters over the defaults, key by key, and validate both.

    ``defaults_path``: the defaults JSON; ``builtin`` (:data:`BUILTIN_DEFAULTS`, or a built-in task's own) when
    None or absent (the file replaces the built-ins, it is not merged with them). ``task_path``: the task's
    ``sampling_params.json`` or the task folder holding it; optional, like in the seed. Raises
    :class:`TaskConfigError` naming the file and key at fault.
    """
    if defaults_path is not None and Path(defaults_path).is_file():
        defaults_source = str(defaults_path)
        defaults = validate_sampling_params(_read_json_object(Path(defaults_path)), defaults_source)
    else:
        defaults_source = "built-in default sampling parameters"
        defaults = validate_sampling_params(builtin, defaults_source)

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
    check_combination(merged, task_source if task else defaults_source)
    return merged
