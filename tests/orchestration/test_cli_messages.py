"""The CLI's one-line summaries of failed runs (issue 13): the user's cause, not Dagster's wrapper."""

from __future__ import annotations

from dagster._utils.error import SerializableErrorInfo

from llm_infer_dagster.orchestration.cli import _one_line, _root_cause


def _chain() -> SerializableErrorInfo:
    user = SerializableErrorInfo("ValueError: bad row 3\n", [], "ValueError")
    wrapper = SerializableErrorInfo(
        'dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred while executing op "t__shards":\n',
        [],
        "DagsterExecutionStepExecutionError",
        cause=user,
    )
    return wrapper


def test_the_innermost_cause_is_reported_on_one_line() -> None:
    cause = _root_cause(_chain())
    assert cause.cls_name == "ValueError"
    assert _one_line(cause) == "ValueError: bad row 3"


def test_our_own_errors_lose_their_class_prefix_and_context_is_followed() -> None:
    ours = SerializableErrorInfo(
        "llm_infer_dagster.errors.TaskConfigError: t/task_config.py: read_file('a') raised\n   ValueError: x\n",
        [],
        "TaskConfigError",
    )
    during = SerializableErrorInfo("KeyError: 'k'\n", [], "KeyError", context=ours)
    cause = _root_cause(during)
    assert _one_line(cause) == "t/task_config.py: read_file('a') raised ValueError: x"


def test_error_summary_counts_one_cause_whatever_its_numbers() -> None:
    from llm_infer_dagster.orchestration.assets.metadata import error_summary

    errors = ["prompt has 3100 tokens, more than 2048", "prompt has 2900 tokens, more than 2048", None, "boom"]
    assert error_summary(errors) == "2x prompt has 3100 tokens, more than 2048; 1x boom"
