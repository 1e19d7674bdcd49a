"""task_settings.json: the pydantic model behind it, and one-line errors naming the file, the key path and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.tasks.task_settings import (
    CHECK_NAMES,
    DEFAULT_CHECKS,
    DEFAULT_CRON,
    SETTINGS_FILE,
    CheckThreshold,
    ModelChoice,
    TaskSettings,
    load_task_settings,
)


def write(folder: Path, content: object) -> Path:
    path = folder / SETTINGS_FILE
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def error_for(folder: Path, content: object) -> str:
    path = write(folder, content)
    with pytest.raises(TaskConfigError) as info:
        load_task_settings(folder)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# --------------------------------------------------------------------------------------------- good files


def test_no_file_gives_the_defaults(tmp_path: Path) -> None:
    s = load_task_settings(tmp_path)
    assert s == TaskSettings()
    assert (s.input_path, s.shard_size, s.models) == (None, None, {})
    assert (s.sensor_enabled, s.sensor_interval_seconds) == (True, 60)
    assert (s.schedule_enabled, s.schedule_cron) == (False, DEFAULT_CRON)


def test_a_full_file(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "input_path": "incoming",
            "shard_size": 512,
            "sensor": {"enabled": False, "interval_seconds": 5},
            "schedule": {"enabled": True, "cron": "*/15 * * * 1-5"},
            "models": {
                "qwen_7b": {
                    "model_path": "models/qwen",
                    "model_type": "vllm",
                    "dtype": "bfloat16",
                    "max_model_len": 4096,
                    "model_args": {"gpu_memory_utilization": 0.8},
                },
                "small": {"model_path": "/abs/small"},
            },
        },
    )
    s = load_task_settings(tmp_path)
    # Relative paths are the task folder's, not the working directory's.
    assert s.input_path == str((tmp_path / "incoming").resolve())
    assert s.shard_size == 512
    assert (s.sensor_enabled, s.sensor_interval_seconds) == (False, 5)
    assert (s.schedule_enabled, s.schedule_cron) == (True, "*/15 * * * 1-5")
    assert s.models["qwen_7b"] == ModelChoice(
        model_path=str((tmp_path / "models" / "qwen").resolve()),
        model_type="vllm",
        dtype="bfloat16",
        max_model_len=4096,
        model_args={"gpu_memory_utilization": 0.8},
    )
    assert s.models["small"] == ModelChoice(model_path="/abs/small")
    assert s.models["small"].model_type is None and s.models["small"].dtype is None


@pytest.mark.parametrize("cron", ["@hourly", "@daily", "0 0 * * MON", "0 0 31 2 *"])
def test_cron_shapes_accepted(tmp_path: Path, cron: str) -> None:
    # Only the shape is judged here; "0 0 31 2 *" (31 February) is Dagster's to refuse, see below.
    write(tmp_path, {"schedule": {"cron": cron}})
    assert load_task_settings(tmp_path).schedule_cron == cron


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_task_settings(tmp_path)
    with pytest.raises(ValueError, match="frozen"):
        s.shard_size = 3  # type: ignore[misc]


# --------------------------------------------------------------------------------------------- errors


def test_invalid_json_and_not_an_object(tmp_path: Path) -> None:
    assert "invalid JSON" in error_for(tmp_path, "{")
    assert "must be a JSON object, got a JSON list" in error_for(tmp_path, "[1]")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"shardsize": 4}, 'unknown key(s) shardsize (did you mean "shard_size"?); valid: calibrate, checks, '),
        (
            {"zzz": 1},
            "unknown key(s) zzz; valid: calibrate, checks, input_path, models, prefix_planning, schedule, sensor",
        ),
        ({"sensor": {"enable": True}}, 'unknown key(s) enable in "sensor" (did you mean "enabled"?); valid: enabled,'),
        ({"schedule": {"crn": "x"}}, 'unknown key(s) crn in "schedule" (did you mean "cron"?)'),
        (
            {"models": {"m": {"model_path": "/m", "dtyp": "auto"}}},
            'unknown key(s) dtyp in "models.m" (did you mean "dtype"?); valid: dtype, lora_adapters, max_model_len,',
        ),
        ({"shardsize": 4, "inputpath": "x"}, 'did you mean "shard_size" for shardsize, "input_path" for inputpath?'),
    ],
)
def test_unknown_keys_say_did_you_mean(tmp_path: Path, content: dict, expected: str) -> None:
    assert expected in error_for(tmp_path, content)


def test_an_unknown_key_is_named_before_other_problems(tmp_path: Path) -> None:
    assert "unknown key(s) shardsize" in error_for(tmp_path, {"sensor": {"enabled": "yes"}, "shardsize": 4})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"shard_size": "4"}, '"shard_size" must be an integer, got "4"'),
        ({"shard_size": 4.0}, '"shard_size" must be an integer, got 4.0'),
        ({"shard_size": True}, '"shard_size" must be an integer, got true'),
        ({"input_path": 3}, '"input_path" must be a string, got 3'),
        ({"sensor": {"enabled": 1}}, '"sensor.enabled" must be true or false, got 1'),
        ({"sensor": None}, '"sensor" must be a JSON object, got null'),
        ({"schedule": {"cron": 5}}, '"schedule.cron" must be a string, got 5'),
        ({"models": []}, '"models" must be a JSON object, got []'),
        ({"models": {"m": "/m"}}, '"models.m" must be a JSON object, got "/m"'),
        ({"models": {"m": {"model_path": 3}}}, '"models.m.model_path" must be a string, got 3'),
        ({"models": {"m": {"model_path": "/m", "max_model_len": "4k"}}}, '"models.m.max_model_len" must be an integer'),
        ({"models": {"m": {"model_path": "/m", "model_args": [1]}}}, '"models.m.model_args" must be a JSON object'),
        (
            {"models": {"qwen": {"model_path": "/m", "dtype": "fp16"}}},
            '"models.qwen.dtype" must be "auto", "float32", "float16" or "bfloat16" (or left out), got "fp16"',
        ),
        (
            {"models": {"qwen": {"model_path": "/m", "model_type": "tgi"}}},
            '"models.qwen.model_type" must be "hf" or "vllm" (or left out), got "tgi"',
        ),
        ({"models": {"m": {}}}, '"model_path" is required in "models.m"'),
    ],
)
def test_wrong_types_name_the_key_path(tmp_path: Path, content: dict, expected: str) -> None:
    assert expected in error_for(tmp_path, content)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"shard_size": 0}, '"shard_size" must be an integer >= 1, got 0'),
        ({"sensor": {"interval_seconds": 0}}, '"sensor.interval_seconds" must be an integer >= 1, got 0'),
        (
            {"models": {"m": {"model_path": "/m", "max_model_len": 0}}},
            '"models.m.max_model_len" must be an integer >= 1',
        ),
    ],
)
def test_bounds(tmp_path: Path, content: dict, expected: str) -> None:
    assert expected in error_for(tmp_path, content)


@pytest.mark.parametrize("name", ["bad name", "a-b", "x" * 41, "ünï", "", "m\n"])
def test_bad_model_names(tmp_path: Path, name: str) -> None:
    message = error_for(tmp_path, {"models": {name: {"model_path": "/m"}}})
    shown = json.dumps(name, ensure_ascii=False)
    assert f"\"models.{shown[1:-1]}\": a model name must be 1-40 letters, digits or '_', got {shown}" in message


@pytest.mark.parametrize("cron", ["every hour", "0 * * *", "0 * * * * *", "", "@often"])
def test_bad_cron_shape(tmp_path: Path, cron: str) -> None:
    message = error_for(tmp_path, {"schedule": {"cron": cron}})
    assert f'"schedule.cron" {json.dumps(cron)} is not a valid cron string' in message
    assert "5 space-separated fields" in message and DEFAULT_CRON in message


# ------------------------------------------------------------------------------------------ quality checks


def test_checks_default_when_left_out(tmp_path: Path) -> None:
    checks = load_task_settings(tmp_path).checks
    for name in CHECK_NAMES:
        warn, error = DEFAULT_CHECKS[name]
        assert checks.threshold(name) == CheckThreshold(warn=warn, error=error, blocking=False)
    assert DEFAULT_CHECKS["error_rows"] == (0.05, 0.5)


def test_checks_override_the_defaults_key_by_key(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "checks": {
                "error_rows": {"warn": 0.05, "error": 0.5, "blocking": True},
                "cut_at_max_tokens": {"warn": 0.2},  # keeps the default error level
                "extraction_failed": {"warn": 1, "error": 1},  # JSON integers are shares too; 1 is "off"
            }
        },
    )
    checks = load_task_settings(tmp_path).checks
    assert checks.error_rows == CheckThreshold(warn=0.05, error=0.5, blocking=True)
    assert checks.cut_at_max_tokens == CheckThreshold(warn=0.2, error=DEFAULT_CHECKS["cut_at_max_tokens"][1])
    assert checks.extraction_failed == CheckThreshold(warn=1.0, error=1.0)
    warn, error = DEFAULT_CHECKS["empty_completions"]
    assert checks.empty_completions == CheckThreshold(warn=warn, error=error)  # untouched


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            {"checks": {"eror_rows": {"warn": 0.1}}},
            'unknown key(s) eror_rows in "checks" (did you mean "error_rows"?); valid: cut_at_max_tokens, '
            "empty_completions, enabled, error_rows, extraction_failed",
        ),
        (
            {"checks": {"error_rows": {"wrn": 0.1}}},
            'unknown key(s) wrn in "checks.error_rows" (did you mean "warn"?); valid: blocking, error, warn',
        ),
        ({"checks": []}, '"checks" must be a JSON object, got []'),
        ({"checks": {"error_rows": 0.1}}, '"checks.error_rows" must be a JSON object, got 0.1'),
        ({"checks": {"error_rows": {"warn": "0.1"}}}, '"checks.error_rows.warn" must be a number, got "0.1"'),
        ({"checks": {"error_rows": {"warn": True}}}, '"checks.error_rows.warn" must be a number, got true'),
        ({"checks": {"error_rows": {"blocking": 1}}}, '"checks.error_rows.blocking" must be true or false, got 1'),
        (
            {"checks": {"error_rows": {"error": 1.5}}},
            '"checks.error_rows.error" must be a number from 0 to 1 (a share of the shard\'s rows), got 1.5',
        ),
        ({"checks": {"cut_at_max_tokens": {"warn": -0.1}}}, '"checks.cut_at_max_tokens.warn" must be a number from 0'),
        (
            {"checks": {"error_rows": {"warn": 0.7, "error": 0.6}}},
            '"checks.error_rows" must have warn <= error, got warn 0.7 > error 0.6',
        ),
        (  # a level left out is the default: say so, it is not in the file
            {"checks": {"error_rows": {"warn": 0.7}}},
            '"checks.error_rows" must have warn <= error, got warn 0.7 > error 0.5 (the default)',
        ),
    ],
)
def test_bad_checks_name_the_key_path(tmp_path: Path, content: dict, expected: str) -> None:
    assert expected in error_for(tmp_path, content)


# ------------------------------------------------------------------- Dagster judges the cron string itself


def _bundle(tmp_path: Path, cron: str) -> SimpleNamespace:
    from dagster import job, op

    @op
    def noop() -> None:
        pass

    @job(name="t_job")
    def t_job() -> None:
        noop()

    write(tmp_path, {"schedule": {"cron": cron}})
    task = SimpleNamespace(name="t", dagster_name="t", folder=tmp_path, settings=load_task_settings(tmp_path))
    return SimpleNamespace(task=task, job=t_job)


@pytest.mark.parametrize("cron", ["61 * * * *", "0 0 31 2 *"])
def test_a_cron_string_dagster_refuses_names_the_file_and_key(tmp_path: Path, cron: str) -> None:
    from llm_infer_dagster.orchestration.sensors import build_missing_shards_schedule

    with pytest.raises(TaskConfigError) as info:
        build_missing_shards_schedule(_bundle(tmp_path, cron))  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f'{tmp_path / SETTINGS_FILE}: "schedule.cron" "{cron}" is not a valid cron string')
    assert f'like "{DEFAULT_CRON}"' in message


def test_a_good_cron_string_builds_the_schedule(tmp_path: Path) -> None:
    from llm_infer_dagster.orchestration.sensors import build_missing_shards_schedule

    sched = build_missing_shards_schedule(_bundle(tmp_path, "@daily"))  # type: ignore[arg-type]
    assert sched.name == "t_missing_shards" and sched.cron_schedule == "@daily"


def test_prefix_planning_is_opt_in(tmp_path: Path) -> None:
    assert TaskSettings().prefix_planning is False
    (tmp_path / "task_settings.json").write_text('{"prefix_planning": true}')
    assert load_task_settings(tmp_path).prefix_planning is True


def test_calibrate_is_opt_in(tmp_path: Path) -> None:
    assert TaskSettings().calibrate is False
    (tmp_path / "task_settings.json").write_text('{"calibrate": true}')
    assert load_task_settings(tmp_path).calibrate is True
    (tmp_path / "task_settings.json").write_text('{"calibrate": "yes"}')
    with pytest.raises(TaskConfigError, match="calibrate"):
        load_task_settings(tmp_path)
