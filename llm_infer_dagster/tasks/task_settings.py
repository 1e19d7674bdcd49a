"""Optional per-task deployment settings: ``<task folder>/task_settings.json``.

A seed task folder has none and gets the defaults. Everything about how a task is kept up to date lives
here, in one place next to the task's code::

    {
      "input_path": "/data/qa/incoming",        # default for get_file_list (LLM_INFER_INPUT_PATH wins if set)
      "shard_size": 512,                        # rows per shard when shards are first cut
      "sensor": {"enabled": true, "interval_seconds": 60},    # register shards of new/grown files
      "schedule": {"enabled": false, "cron": "0 * * * *"},    # materialize missing shards
      "models": {"qwen7b": {"model_path": "/models/qwen7b", "model_type": "vllm"}},  # also run these
                                                # ... each may add "lora_adapters": {"<name>": "<adapter folder>"}
      "checks": {"error_rows": {"warn": 0.05, "error": 0.5, "blocking": true}},  # per-shard quality checks
      "prefix_planning": false,                 # true: order rows and shards so shared prompt prefixes hit vLLM's cache
      "calibrate": false,                       # true: the first shards try batch widths; the fastest is kept
      "task": "generate"                        # or a pooling task: "embed", "classify", "reward" (no text)
    }

The file is :class:`TaskSettings` (pydantic, strict JSON types, unknown keys refused); a mistake is one
:class:`TaskConfigError` line naming the file, the key path (``models.qwen7b.dtype``) and what it takes.
Only the cron string's shape is checked here: Dagster itself judges it when the schedule is built
(``orchestration/sensors.py``), and that refusal names this file and ``schedule.cron`` too.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from llm_infer_dagster.errors import TaskConfigError

__all__ = [
    "ADAPTER_CONFIG",
    "ANSWERS_CHECKS",
    "CHECK_NAMES",
    "COMPLETIONS_CHECKS",
    "CRON_ALIASES",
    "DEFAULT_CHECKS",
    "DEFAULT_CRON",
    "MODEL_NAME_RE",
    "SETTINGS_FILE",
    "CheckName",
    "CheckSettings",
    "AdapterChoice",
    "CheckThreshold",
    "ModelChoice",
    "ScheduleSettings",
    "SensorSettings",
    "TASK_KINDS",
    "TaskKind",
    "TaskSettings",
    "load_task_settings",
]

SETTINGS_FILE = "task_settings.json"
DEFAULT_CRON = "0 * * * *"
#: The ``@`` shorthands Dagster accepts for a cron string.
CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")

#: What the model does per prompt: generate text, or a pooling task (one forward pass, a value per prompt:
#: an embedding, label probabilities, a reward score; ``engines/pooling.py``).
TaskKind = Literal["generate", "embed", "classify", "reward"]
TASK_KINDS: tuple[TaskKind, ...] = get_args(TaskKind)

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,40}$")
_MODEL_NAME_RULE = "a model name must be 1-40 letters, digits or '_'"


def _cron_shape(value: str) -> str:
    """Five space-separated fields (minute hour day month weekday) or an ``@`` shorthand; Dagster checks the rest."""
    if value.strip() in CRON_ALIASES or len(value.split()) == 5:
        return value
    raise ValueError(
        f"{json.dumps(value)} is not a valid cron string: it needs 5 space-separated fields "
        f'(minute hour day month weekday) like "{DEFAULT_CRON}", or one of {", ".join(CRON_ALIASES)}'
    )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME_RE.pattern)]


class ModelChoice(_Section):
    """A named model this task also runs on, side by side with the run's default model.

    Unset fields fall back to the run's settings (model type, dtype, context length, engine arguments).
    A relative ``model_path`` in the file is relative to the task folder, and so is each folder of
    ``lora_adapters`` (adapter name -> PEFT LoRA adapter folder of this base model): each adapter becomes a
    model of the task of its own, named by its key (an :class:`AdapterChoice` in ``TaskSettings.models``).
    """

    model_path: str
    model_type: Literal["hf", "vllm"] | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] | None = None
    max_model_len: Annotated[int, Field(ge=1)] | None = None
    model_args: dict[str, Any] | None = None
    lora_adapters: dict[ModelName, str] | None = None

    @property
    def adapter_path(self) -> str | None:
        """The LoRA adapter folder this model applies to its base (None: the model as it is)."""
        return None


class AdapterChoice(ModelChoice):
    """One LoRA adapter of a declared model, as a model of its own (made by :func:`load_task_settings`).

    Never read from the file (where adapters sit under their base's ``lora_adapters``): the base's fields,
    plus the adapter's folder (absolute, checked to be a PEFT LoRA adapter) and the base model's name.
    """

    adapter: str
    base_model: str

    @property
    def adapter_path(self) -> str | None:
        return self.adapter


class SensorSettings(_Section):
    """``sensor``: the ``<task>_new_shards`` sensor that registers shards of new or grown input files."""

    enabled: bool = True
    interval_seconds: Annotated[int, Field(ge=1)] = 60


class ScheduleSettings(_Section):
    """``schedule``: the ``<task>_missing_shards`` schedule that materializes missing or stale shards."""

    enabled: bool = False
    cron: Annotated[str, AfterValidator(_cron_shape)] = DEFAULT_CRON


#: The per-shard quality checks (``shards/quality.py`` computes them), on completions and on answers.
CheckName = Literal["error_rows", "empty_completions", "cut_at_max_tokens", "extraction_failed"]
CHECK_NAMES: tuple[CheckName, ...] = get_args(CheckName)
COMPLETIONS_CHECKS: tuple[CheckName, ...] = ("error_rows", "empty_completions", "cut_at_max_tokens")
ANSWERS_CHECKS: tuple[CheckName, ...] = ("extraction_failed",)

Share = Annotated[float, Field(ge=0, le=1)]


class CheckThreshold(_Section):
    """One check's thresholds: a share of rows above ``error`` fails it with ERROR, above ``warn`` with WARN.

    A share can never be above 1, so ``1`` turns a level off. ``blocking`` on a completions check keeps a
    shard that fails it with ERROR from flowing downstream (its answers are not made, the shard fails).
    """

    warn: Share
    error: Share
    blocking: bool = False


#: name -> (warn, error): what a check left out of the file (or a level left out of a check) gets.
DEFAULT_CHECKS: dict[CheckName, tuple[float, float]] = {
    "error_rows": (0.05, 0.5),
    "empty_completions": (0.05, 0.5),
    "cut_at_max_tokens": (0.5, 1.0),  # short max_tokens cut most rows on purpose: a warning, never an error
    "extraction_failed": (0.1, 0.5),
}


def _default(name: CheckName) -> CheckThreshold:
    warn, error = DEFAULT_CHECKS[name]
    return CheckThreshold(warn=warn, error=error)


class CheckSettings(_Section):
    """``checks``: per-check thresholds; each key given replaces that check's default, key by key.

    ``enabled: false`` declares no checks at all (each costs a Dagster event per shard: ~2 ms on sqlite).
    """

    enabled: bool = True
    error_rows: CheckThreshold = _default("error_rows")
    empty_completions: CheckThreshold = _default("empty_completions")
    cut_at_max_tokens: CheckThreshold = _default("cut_at_max_tokens")
    extraction_failed: CheckThreshold = _default("extraction_failed")

    @field_validator(*CHECK_NAMES, mode="wrap")
    @classmethod
    def _over_defaults(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> CheckThreshold:
        """``{"warn": 0.2}`` keeps the check's default ``error``; warn above error is refused, naming both."""
        name = info.field_name
        assert name in DEFAULT_CHECKS
        given = dict(value) if isinstance(value, dict) else None
        if given is not None:
            value = {**_default(name).model_dump(), **given}
        threshold: CheckThreshold = handler(value)
        if threshold.warn > threshold.error:

            def level(k: str) -> str:
                return f"{k} {_show(getattr(threshold, k))}" + ("" if given and k in given else " (the default)")

            raise ValueError(f"must have warn <= error, got {level('warn')} > {level('error')}")
        return threshold

    def threshold(self, name: CheckName) -> CheckThreshold:
        value = getattr(self, name)
        assert isinstance(value, CheckThreshold)
        return value


class TaskSettings(_Section):
    """The whole ``task_settings.json``; ``TaskSettings()`` is a folder without one."""

    input_path: str | None = None
    shard_size: Annotated[int, Field(ge=1)] | None = None
    sensor: SensorSettings = SensorSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    models: dict[ModelName, ModelChoice] = Field(default_factory=dict)
    checks: CheckSettings = CheckSettings()
    # Run rows and shards that share a prompt prefix together, so vLLM's prefix cache hits (results unchanged)
    prefix_planning: bool = False  # opt in: measured on the engine, not yet on whole jobs (BENCHMARKS.md)
    # Each worker's first shards try a few batch widths and keep the fastest (outputs unchanged; speed only)
    calibrate: bool = False
    # generate text, or a pooling task whose completions hold a vector / label probabilities / a score
    task: TaskKind = "generate"

    @property
    def sensor_enabled(self) -> bool:
        return self.sensor.enabled

    @property
    def sensor_interval_seconds(self) -> int:
        return self.sensor.interval_seconds

    @property
    def schedule_enabled(self) -> bool:
        return self.schedule.enabled

    @property
    def schedule_cron(self) -> str:
        return self.schedule.cron


# ---------------------------------------------------------------------------------------- error messages

# What a value must be, by pydantic error type (strict mode: no coercion, so one word per JSON kind).
_KINDS = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _show(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _dotted(loc: tuple[int | str, ...]) -> str:
    """``models.qwen.dtype``; a newline or quote in a model name is escaped, so the message stays one line."""
    return json.dumps(".".join(str(p) for p in loc), ensure_ascii=False)[1:-1]


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class of the JSON object at ``loc`` (``("models", "qwen")`` -> ModelChoice)."""
    model: type[BaseModel] = TaskSettings
    parts = list(loc)
    while parts:
        name = parts.pop(0)
        if model is TaskSettings and name == "models":
            if not parts:
                return None  # the models mapping itself: any name
            parts.pop(0)
            model = ModelChoice
            continue
        field = model.model_fields.get(str(name))
        sub = field.annotation if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    return model


def _unknown_keys(path: Path, errors: list[Any]) -> str:
    parent = tuple(errors[0]["loc"][:-1])
    names = [str(e["loc"][-1]) for e in errors if tuple(e["loc"][:-1]) == parent]
    model = _model_at(parent)
    valid = sorted(model.model_fields) if model else []
    matches = [(n, difflib.get_close_matches(n, valid, n=1, cutoff=0.6)) for n in names]
    hints = [(n, close[0]) for n, close in matches if close]
    if len(names) == 1 and hints:
        hint = f' (did you mean "{hints[0][1]}"?)'
    elif hints:
        hint = " (did you mean " + ", ".join(f'"{c}" for {n}' for n, c in hints) + "?)"
    else:
        hint = ""
    where = f' in "{_dotted(parent)}"' if parent else ""
    return f"{path}: unknown key(s) {', '.join(names)}{where}{hint}; valid: {', '.join(valid)}"


def _one_line(path: Path, exc: ValidationError) -> str:
    """The first problem as one line: the file, the key path and what the key takes."""
    errors = exc.errors()
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    if extra:  # a misspelt key is the likeliest cause of everything else: name it first
        return _unknown_keys(path, extra)
    err = errors[0]
    loc, kind, got = tuple(err["loc"]), err["type"], _show(err.get("input"))
    if kind == "string_pattern_mismatch" and loc[:1] == ("models",) and loc[-1:] == ("[key]",):
        # a model's name, or an adapter's under models.<model>.lora_adapters
        return f'{path}: "{_dotted(loc[:-1])}": {_MODEL_NAME_RULE}, got {_show(loc[-2])}'
    if kind == "missing":
        where = f' in "{_dotted(loc[:-1])}"' if loc[:-1] else ""
        return f'{path}: "{loc[-1]}" is required{where}'
    key = f'"{_dotted(loc)}"'
    if kind == "literal_error":
        allowed = str(err.get("ctx", {}).get("expected", "")).replace("'", '"')
        return f"{path}: {key} must be {allowed} (or left out), got {got}"
    if kind in _BOUNDS:
        bound = next(iter(err.get("ctx", {}).values()), "?")
        if loc[:1] == ("checks",):  # a check's levels are shares of rows
            return f"{path}: {key} must be a number from 0 to 1 (a share of the shard's rows), got {got}"
        return f"{path}: {key} must be an integer {_BOUNDS[kind]} {bound}, got {got}"
    if kind in _KINDS:
        return f"{path}: {key} must be {_KINDS[kind]}, got {got}"
    if kind == "value_error":  # our own validators: the message says what is wrong and what is allowed
        return f"{path}: {key} {str(err.get('ctx', {}).get('error', err['msg']))}"
    return f"{path}: {key} {err['msg'][:1].lower()}{err['msg'][1:]}, got {got}"


# -------------------------------------------------------------------------------------------------- loading


def _in_folder(folder: Path, p: str) -> Path:
    """A path from the file: relative ones are relative to the task folder, not to wherever Dagster started."""
    return Path(p) if Path(p).is_absolute() else (folder / p).resolve()


#: What makes a folder a PEFT adapter: its config (and one of the weight files next to it).
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _adapter_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a PEFT LoRA adapter both engines can load, or None if it is one."""
    if not folder.is_dir():
        return "no such folder" if not folder.exists() else "is not a folder"
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        return f"has no {ADAPTER_CONFIG}: not a PEFT adapter folder (save one with peft's save_pretrained)"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{ADAPTER_CONFIG} is not valid JSON ({exc})"
    if not isinstance(config, dict):
        return f"{ADAPTER_CONFIG} must hold a JSON object"
    if config.get("peft_type") != "LORA":
        return f'{ADAPTER_CONFIG} has peft_type {_show(config.get("peft_type"))}; only "LORA" adapters are supported'
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        return f'{ADAPTER_CONFIG} has "r" (the LoRA rank) {_show(rank)}; it must be a positive integer'
    if not any((folder / w).is_file() for w in ADAPTER_WEIGHTS):
        return f"has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})"
    return None


def _expand_adapters(path: Path, folder: Path, models: dict[str, ModelChoice]) -> dict[str, ModelChoice]:
    """Each model's LoRA adapters as models of their own, after their base; a bad adapter is one line."""
    out: dict[str, ModelChoice] = dict(models)
    for base, choice in models.items():
        adapters: dict[str, str] = {}
        for name, given in (choice.lora_adapters or {}).items():
            key = f'"{_dotted(("models", base, "lora_adapters", name))}"'
            if name in out:
                taken = "a model" if name in models else "an adapter"
                raise TaskConfigError(
                    f"{path}: {key}: {_show(name)} is already {taken} of this task; adapters are models of their "
                    "own (assets [<task>, <adapter>, completions]), so give it a name no other model has"
                )
            resolved = Path(_in_folder(folder, given))
            problem = _adapter_problem(resolved)
            if problem is not None:
                raise TaskConfigError(f"{path}: {key}: {resolved} {problem}")
            adapters[name] = str(resolved)
            out[name] = AdapterChoice(
                **{**choice.model_dump(), "lora_adapters": None}, adapter=str(resolved), base_model=base
            )
        if adapters:
            out[base] = choice.model_copy(update={"lora_adapters": adapters})
    return out


def load_task_settings(folder: Path) -> TaskSettings:
    """``<folder>/task_settings.json``, or the defaults when there is none; raises :class:`TaskConfigError`."""
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return TaskSettings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TaskConfigError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TaskConfigError(f"{path}: must be a JSON object, got a JSON {type(data).__name__}")
    try:
        settings = TaskSettings.model_validate(data)
    except ValidationError as exc:
        raise TaskConfigError(_one_line(path, exc)) from None
    models = {
        name: m.model_copy(update={"model_path": str(_in_folder(folder, m.model_path))})
        for name, m in settings.models.items()
    }
    update: dict[str, Any] = {"models": _expand_adapters(path, folder, models)}
    if settings.input_path is not None:
        # an absolute input_path stays as written (glob patterns and trailing slashes included)
        update["input_path"] = (
            settings.input_path
            if Path(settings.input_path).is_absolute()
            else str(_in_folder(folder, settings.input_path))
        )
    return settings.model_copy(update=update)
