"""Optional per-task deployment settings: ``<task folder>/task_settings.json``.

A seed task folder has none and gets the defaults. Everything about how a task is kept up to date lives
here, in one place next to the task's code::

    {
      "input_path": "/data/qa/incoming",        # default for get_file_list (LLM_INFER_INPUT_PATH wins if set)
      "shard_size": 512,                        # rows per shard when shards are first cut
      "sensor": {"enabled": true, "interval_seconds": 60},    # register shards of new/grown files
      "schedule": {"enabled": false, "cron": "0 * * * *"},    # materialize missing shards
      "models": {"qwen7b": {"model_path": "/models/qwen7b", "model_type": "vllm"}}  # also run these
    }
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_infer_dagster.errors import TaskConfigError

SETTINGS_FILE = "task_settings.json"
DEFAULT_CRON = "0 * * * *"


MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,40}$")


@dataclass(frozen=True)
class ModelChoice:
    """A named model this task also runs on, side by side with the run's default model.

    Unset fields fall back to the run's settings (model type, dtype, context length, engine arguments).
    """

    model_path: str
    model_type: str | None = None
    dtype: str | None = None
    max_model_len: int | None = None
    model_args: dict[str, Any] | None = None


@dataclass(frozen=True)
class TaskSettings:
    input_path: str | None = None
    shard_size: int | None = None
    sensor_enabled: bool = True
    sensor_interval_seconds: int = 60
    schedule_enabled: bool = False
    schedule_cron: str = DEFAULT_CRON
    models: dict[str, ModelChoice] = field(default_factory=dict)


_KEYS = {"input_path", "shard_size", "sensor", "schedule", "models"}
_MODEL_KEYS = {"model_path", "model_type", "dtype", "max_model_len", "model_args"}
_SENSOR_KEYS = {"enabled", "interval_seconds"}
_SCHEDULE_KEYS = {"enabled", "cron"}


def _check_keys(where: str, obj: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise TaskConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}")


def _typed(where: str, value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TaskConfigError(f"{where}: {what} must be a {kind.__name__}, got {json.dumps(value)}")
    return value


def load_task_settings(folder: Path) -> TaskSettings:
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return TaskSettings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TaskConfigError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TaskConfigError(f"{path}: must be a JSON object")
    _check_keys(str(path), data, _KEYS)
    sensor = _typed(str(path), data.get("sensor", {}), dict, '"sensor"')
    schedule = _typed(str(path), data.get("schedule", {}), dict, '"schedule"')
    _check_keys(f'{path} "sensor"', sensor, _SENSOR_KEYS)
    _check_keys(f'{path} "schedule"', schedule, _SCHEDULE_KEYS)
    models: dict[str, ModelChoice] = {}
    for mname, spec in _typed(str(path), data.get("models", {}), dict, '"models"').items():
        where = f'{path} "models.{mname}"'
        if not MODEL_NAME_RE.fullmatch(mname):
            raise TaskConfigError(f"{where}: a model name must be 1-40 letters, digits or '_'")
        _typed(where, spec, dict, "a model")
        _check_keys(where, spec, _MODEL_KEYS)
        if "model_path" not in spec:
            raise TaskConfigError(f'{where}: "model_path" is required')
        model_path = Path(_typed(where, spec["model_path"], str, '"model_path"'))
        models[mname] = ModelChoice(
            model_path=str(model_path if model_path.is_absolute() else (folder / model_path).resolve()),
            model_type=_typed(where, spec["model_type"], str, '"model_type"') if "model_type" in spec else None,
            dtype=_typed(where, spec["dtype"], str, '"dtype"') if "dtype" in spec else None,
            max_model_len=(
                _typed(where, spec["max_model_len"], int, '"max_model_len"') if "max_model_len" in spec else None
            ),
            model_args=_typed(where, spec["model_args"], dict, '"model_args"') if "model_args" in spec else None,
        )
    out = TaskSettings(
        input_path=_typed(str(path), data["input_path"], str, '"input_path"') if "input_path" in data else None,
        shard_size=_typed(str(path), data["shard_size"], int, '"shard_size"') if "shard_size" in data else None,
        sensor_enabled=_typed(str(path), sensor.get("enabled", True), bool, '"sensor.enabled"'),
        sensor_interval_seconds=_typed(str(path), sensor.get("interval_seconds", 60), int, '"sensor.interval_seconds"'),
        schedule_enabled=_typed(str(path), schedule.get("enabled", False), bool, '"schedule.enabled"'),
        schedule_cron=_typed(str(path), schedule.get("cron", DEFAULT_CRON), str, '"schedule.cron"'),
        models=models,
    )
    if out.shard_size is not None and out.shard_size < 1:
        raise TaskConfigError(f'{path}: "shard_size" must be >= 1')
    if out.sensor_interval_seconds < 1:
        raise TaskConfigError(f'{path}: "sensor.interval_seconds" must be >= 1')
    from dagster._utils.schedules import is_valid_cron_string

    if not is_valid_cron_string(out.schedule_cron):
        raise TaskConfigError(f'{path}: "schedule.cron" {out.schedule_cron!r} is not a valid cron string')
    if out.input_path is not None and not Path(out.input_path).is_absolute():
        # relative input paths are relative to the task folder, not to wherever Dagster was started
        object.__setattr__(out, "input_path", str((folder / out.input_path).resolve()))
    return out
