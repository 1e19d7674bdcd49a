"""Sampling parameters: merge order, every error message, and the mapping to HF ``generate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_infer_dagster.engines.hf_sampling import (
    HF_SUPPORTED_KEYS,
    check_hf_supported,
    normalize_stop,
    to_hf_generate_kwargs,
)
from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.tasks.sampling import (
    BUILTIN_DEFAULTS,
    SAMPLING_KEYS,
    TaskSamplingParams,
    load_sampling_params,
    validate_sampling_params,
)


def write(path: Path, content: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    d = tmp_path / "configs" / "qa"
    d.mkdir(parents=True)
    return d


# ------------------------------------------------------------------------------------------------ merging


def test_builtin_defaults_when_no_files(tmp_path: Path) -> None:
    assert load_sampling_params(None, None) == BUILTIN_DEFAULTS
    assert load_sampling_params(tmp_path / "missing.json", tmp_path / "nothing_here") == BUILTIN_DEFAULTS


def test_task_overrides_defaults_key_by_key(tmp_path: Path, task_dir: Path) -> None:
    defaults = write(tmp_path / "default_sampling_params.json", {"temperature": 1.0, "max_tokens": 32, "top_k": 5})
    write(task_dir / "sampling_params.json", {"temperature": 0.5, "n": 2, "stop": ["\n"]})
    params = load_sampling_params(defaults, task_dir)
    assert params == {"temperature": 0.5, "max_tokens": 32, "top_k": 5, "n": 2, "stop": ["\n"]}
    # The task file may also be given directly.
    assert load_sampling_params(defaults, task_dir / "sampling_params.json") == params


def test_defaults_file_replaces_builtins(tmp_path: Path) -> None:
    defaults = write(tmp_path / "d.json", {"max_tokens": 8})
    assert load_sampling_params(defaults, None) == {"max_tokens": 8}


def test_ints_accepted_for_float_keys_and_stored_as_float(task_dir: Path) -> None:
    write(task_dir / "sampling_params.json", {"temperature": 1, "top_p": 1, "seed": None, "logprobs": None})
    params = load_sampling_params(None, task_dir)
    assert isinstance(params["temperature"], float) and isinstance(params["top_p"], float)
    assert params["seed"] is None


def test_every_vllm_key_is_accepted(task_dir: Path) -> None:
    sample = {
        "n": 2,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "repetition_penalty": 1.1,
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": -1,
        "min_p": 0.05,
        "seed": 7,
        "stop": "END",
        "stop_token_ids": [2],
        "ignore_eos": False,
        "max_tokens": 64,
        "min_tokens": 1,
        "logprobs": 3,
        "prompt_logprobs": 1,
        "skip_special_tokens": True,
        "spaces_between_special_tokens": True,
        "include_stop_str_in_output": False,
        "bad_words": ["foo"],
        "structured_outputs": {"choice": ["a", "b"]},
    }
    assert set(sample) == set(SAMPLING_KEYS)
    write(task_dir / "sampling_params.json", sample)
    assert load_sampling_params(None, task_dir)["stop"] == "END"


# ----------------------------------------------------------------------------------------------- errors


def error_for(task_dir: Path, content: object, defaults: Path | None = None) -> str:
    write(task_dir / "sampling_params.json", content)
    with pytest.raises(TaskConfigError) as info:
        load_sampling_params(defaults, task_dir)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(task_dir / "sampling_params.json") + ": ")
    return message


def test_unknown_key_suggests_the_close_match(task_dir: Path) -> None:
    message = error_for(task_dir, {"temprature": 0.5})
    assert 'unknown sampling key "temprature"' in message
    assert 'did you mean "temperature"?' in message
    assert "valid keys: n, " in message and "max_tokens" in message


def test_unknown_key_without_close_match_lists_valid_keys(task_dir: Path) -> None:
    message = error_for(task_dir, {"zzzz": 1})
    assert 'unknown sampling key "zzzz"' in message and "did you mean" not in message
    assert "valid keys:" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"max_tokens": "32"}, '"max_tokens" must be an integer, got "32"'),
        ({"max_tokens": 32.5}, '"max_tokens" must be an integer, got 32.5'),
        ({"n": True}, '"n" must be an integer, got true'),
        ({"temperature": "hot"}, '"temperature" must be a number, got "hot"'),
        ({"temperature": False}, '"temperature" must be a number, got false'),
        ({"stop": 5}, '"stop" must be a string, a list of strings or null, got 5'),
        ({"stop": ["a", 1]}, '"stop" must be a string, a list of strings or null, got ["a", 1]'),
        ({"stop_token_ids": [1, True]}, '"stop_token_ids" must be a list of integers, got [1, true]'),
        ({"ignore_eos": "yes"}, '"ignore_eos" must be true or false, got "yes"'),
        ({"seed": 1.5}, '"seed" must be an integer or null, got 1.5'),
    ],
)
def test_wrong_types(task_dir: Path, content: dict, expected: str) -> None:
    assert expected in error_for(task_dir, content)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"temperature": -0.1}, '"temperature" must be at least 0'),
        ({"top_p": 0}, '"top_p" must be in (0, 1], got 0'),
        ({"top_p": 1.5}, '"top_p" must be in (0, 1], got 1.5'),
        ({"n": 0}, '"n" must be at least 1, got 0'),
        ({"max_tokens": 0}, '"max_tokens" must be at least 1, got 0'),
        ({"top_k": -2}, '"top_k" must be -1 or 0 (off) or at least 1, got -2'),
        ({"min_p": 2}, '"min_p" must be in [0, 1]'),
        ({"min_tokens": 50, "max_tokens": 10}, '"min_tokens" (50) must not exceed "max_tokens" (10)'),
    ],
)
def test_out_of_range(task_dir: Path, content: dict, expected: str) -> None:
    assert expected in error_for(task_dir, content)


def test_invalid_json_gives_position(task_dir: Path) -> None:
    message = error_for(task_dir, '{"temperature": 0,\n "max_tokens": }')
    assert "invalid JSON at line 2 column" in message


def test_json_not_an_object(task_dir: Path) -> None:
    message = error_for(task_dir, "[1, 2]")
    assert "must be a JSON object" in message and "list" in message


def test_errors_in_the_defaults_file_name_it(tmp_path: Path) -> None:
    defaults = write(tmp_path / "default_sampling_params.json", {"max_tokens": -1})
    with pytest.raises(TaskConfigError, match=r"default_sampling_params\.json: \"max_tokens\" must be at least 1"):
        load_sampling_params(defaults, None)


# ----------------------------------------------------------------------------------------------- stop


@pytest.mark.parametrize(("stop", "expected"), [(None, []), ("END", ["END"]), (["a", "", "b"], ["a", "b"]), ([], [])])
def test_normalize_stop(stop: object, expected: list[str]) -> None:
    assert normalize_stop({"stop": stop}) == expected
    assert normalize_stop({}) == []


# ------------------------------------------------------------------------------------------ HF mapping


def test_hf_rejects_unsupported_keys_with_the_fix() -> None:
    with pytest.raises(TaskConfigError) as info:
        check_hf_supported({"temperature": 1.0, "presence_penalty": 0.5, "logprobs": 2})
    message = str(info.value)
    assert '"presence_penalty"' in message and '"logprobs"' in message
    assert "--model_type vllm" in message and "drop them" in message


def test_hf_accepts_supported_keys_and_neutral_values() -> None:
    check_hf_supported({k: None for k in HF_SUPPORTED_KEYS})
    check_hf_supported({"presence_penalty": 0.0, "frequency_penalty": 0, "logprobs": None, "bad_words": []})


def test_hf_greedy() -> None:
    kwargs = to_hf_generate_kwargs({"temperature": 0, "top_p": 0.5, "top_k": 5, "max_tokens": 7, "n": 3})
    assert kwargs == {"do_sample": False, "max_new_tokens": 7, "repetition_penalty": 1.0}


def test_hf_sampling_top_k_off_and_n() -> None:
    kwargs = to_hf_generate_kwargs({"temperature": 0.8, "top_k": -1, "n": 3, "max_tokens": 5})
    assert kwargs["do_sample"] is True
    assert kwargs["top_k"] == 0  # vLLM -1 (off) -> HF 0 (off); HF's own default would be 50
    assert kwargs["top_p"] == 1.0  # vLLM default, not the checkpoint's
    assert kwargs["num_return_sequences"] == 3
    assert kwargs["temperature"] == 0.8 and kwargs["max_new_tokens"] == 5
    assert "min_p" not in kwargs
    assert to_hf_generate_kwargs({"temperature": 1, "top_k": 0})["top_k"] == 0
    assert to_hf_generate_kwargs({"temperature": 1, "top_k": 40})["top_k"] == 40


def test_hf_mapping_of_lengths_and_penalties() -> None:
    kwargs = to_hf_generate_kwargs(
        {"temperature": 1, "min_tokens": 4, "max_tokens": 9, "min_p": 0.1, "repetition_penalty": 1.2}
    )
    assert kwargs["min_new_tokens"] == 4 and kwargs["max_new_tokens"] == 9
    assert kwargs["min_p"] == 0.1 and kwargs["repetition_penalty"] == 1.2
    assert to_hf_generate_kwargs({})["max_new_tokens"] == 16  # vLLM's default max_tokens
    assert to_hf_generate_kwargs(BUILTIN_DEFAULTS) == {
        "do_sample": True,
        "temperature": 1.0,
        "top_p": 0.9,
        "top_k": 50,
        "num_return_sequences": 1,
        "max_new_tokens": 32,
        "repetition_penalty": 1.0,
    }


def test_greedy_with_several_samples_is_refused_for_every_engine(tmp_path: Path) -> None:
    task = tmp_path / "sampling_params.json"
    task.write_text('{"temperature": 0, "n": 3}')
    with pytest.raises(TaskConfigError, match='"n" = 3 with "temperature" 0') as err:
        load_sampling_params(None, task)
    assert str(task) in str(err.value) and 'set "temperature" above 0 or "n" to 1' in str(err.value)


def test_n_above_what_vllm_allows_is_one_line_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = tmp_path / "sampling_params.json"
    task.write_text('{"temperature": 0.7, "n": 16385}')
    monkeypatch.delenv("VLLM_MAX_N_SEQUENCES", raising=False)
    with pytest.raises(TaskConfigError) as err:
        load_sampling_params(None, task)
    assert str(err.value) == (
        f'{task}: "n" = 16385 is above the 16384 samples per prompt vLLM allows (VLLM_MAX_N_SEQUENCES); lower "n"'
    )
    task.write_text('{"temperature": 0.7, "n": 16384}')
    assert load_sampling_params(None, task)["n"] == 16384  # vLLM's own limit, not below it
    monkeypatch.setenv("VLLM_MAX_N_SEQUENCES", "8")  # vLLM's variable lowers (or raises) it, as it does vLLM's
    with pytest.raises(TaskConfigError, match='"n" = 16384 is above the 8 samples'):
        load_sampling_params(None, task)


# ------------------------------------------------------------------------------- the pydantic model


@pytest.mark.parametrize("key", ["n", "top_k", "max_tokens", "min_tokens", "seed", "logprobs", "prompt_logprobs"])
def test_a_bool_is_never_an_integer(task_dir: Path, key: str) -> None:
    assert f'"{key}" must be an integer' in error_for(task_dir, {key: True})


@pytest.mark.parametrize("key", ["temperature", "top_p", "min_p", "presence_penalty", "repetition_penalty"])
def test_a_bool_is_never_a_number(task_dir: Path, key: str) -> None:
    assert f'"{key}" must be a number, got true' in error_for(task_dir, {key: True})


def test_a_float_is_never_an_integer_and_nan_is_no_number(task_dir: Path) -> None:
    assert '"n" must be an integer, got 2.0' in error_for(task_dir, {"n": 2.0})
    assert '"temperature" must be a number, got NaN' in error_for(task_dir, '{"temperature": NaN}')
    assert '"top_p" must be a number, got Infinity' in error_for(task_dir, '{"top_p": Infinity}')


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"presence_penalty": 2.5}, '"presence_penalty" must be in [-2, 2], got 2.5'),
        ({"frequency_penalty": -3}, '"frequency_penalty" must be in [-2, 2], got -3'),
        ({"repetition_penalty": 0}, '"repetition_penalty" must be greater than 0 (1 means off), got 0'),
        ({"min_tokens": -1}, '"min_tokens" must be at least 0, got -1'),
        ({"logprobs": -1}, '"logprobs" must be at least 0, got -1'),
        ({"stop_token_ids": [3, -1]}, '"stop_token_ids" must be a list of non-negative token ids, got [3, -1]'),
    ],
)
def test_more_bounds(task_dir: Path, content: dict, expected: str) -> None:
    assert expected in error_for(task_dir, content)


def test_null_only_where_vllm_takes_it(task_dir: Path) -> None:
    assert '"max_tokens" must be an integer, got null' in error_for(task_dir, {"max_tokens": None})
    assert '"bad_words" must be a list of strings, got null' in error_for(task_dir, {"bad_words": None})
    write(task_dir / "sampling_params.json", {"seed": None, "stop": None, "logprobs": None})
    assert load_sampling_params(None, task_dir)["stop"] is None


def test_the_first_problem_in_the_file_is_named(task_dir: Path) -> None:
    assert 'unknown sampling key "temprature"' in error_for(task_dir, {"temprature": 1, "n": 0})
    assert '"n" must be at least 1' in error_for(task_dir, {"n": 0, "temprature": 1})
    assert '"top_p"' in error_for(task_dir, {"top_p": 2, "max_tokens": "x"})


def test_unknown_key_hint_for_a_near_miss(task_dir: Path) -> None:
    assert 'did you mean "max_tokens"?' in error_for(task_dir, {"max_token": 8})
    assert 'did you mean "stop_token_ids"?' in error_for(task_dir, {"stop_tokens_ids": [1]})


def test_validate_keeps_the_keys_given_in_their_order() -> None:
    out = validate_sampling_params({"top_k": 5, "temperature": 1, "stop": ["x"]}, "here")
    assert list(out) == ["top_k", "temperature", "stop"]
    assert out == {"top_k": 5, "temperature": 1.0, "stop": ["x"]} and isinstance(out["temperature"], float)
    with pytest.raises(TaskConfigError, match=r'^here: "top_k" must be -1 or 0 \(off\) or at least 1, got -5$'):
        validate_sampling_params({"top_k": -5}, "here")


def test_the_model_has_vllms_defaults() -> None:
    d = TaskSamplingParams()
    assert (d.n, d.temperature, d.top_p, d.top_k, d.min_p, d.max_tokens, d.min_tokens) == (1, 1.0, 1.0, 0, 0.0, 16, 0)
    assert d.skip_special_tokens and d.spaces_between_special_tokens and d.stop_token_ids == []
    assert tuple(TaskSamplingParams.model_fields) == SAMPLING_KEYS
