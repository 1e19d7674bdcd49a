"""format_prompt returning a dict: {"prompt"} or {"messages"}, optionally with the row's own sampling_params,
validated like sampling_params.json (over the task's merged parameters) and naming the task file."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from llm_infer_dagster.tasks.loader import RowPrompt, RowSamplingError, load_task

TASK = """
import json

def get_file_list(input_path):
    return []

def read_file(file_path):
    return []

def format_prompt(org_data):
    return org_data["ret"]

def extract_answer(model_response):
    return model_response
"""

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture()
def task(tmp_path: Path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "task_config.py").write_text(textwrap.dedent(TASK))
    (folder / "sampling_params.json").write_text(json.dumps({"max_tokens": 20, "min_tokens": 4}))
    return load_task(tmp_path, "t")


def test_strings_and_messages_come_back_as_before(task) -> None:
    assert task.format_prompt({"ret": "hello"}) == "hello"
    assert task.format_prompt({"ret": MESSAGES}) == MESSAGES


def test_a_dict_gives_its_prompt_or_messages_and_no_overrides(task) -> None:
    assert task.format_prompt({"ret": {"prompt": "hello"}}) == RowPrompt("hello")
    assert task.format_prompt({"ret": {"messages": MESSAGES, "sampling_params": {}}}) == RowPrompt(MESSAGES)


def test_the_rows_overrides_are_validated_and_normalised(task) -> None:
    got = task.format_prompt(
        {"ret": {"prompt": "x", "sampling_params": {"temperature": 0, "structured_outputs": {"choice": ["a"]}}}}
    )
    assert got == RowPrompt("x", {"temperature": 0.0, "structured_outputs": {"choice": ["a"]}})


@pytest.mark.parametrize(
    ("ret", "says"),
    [
        ({"prompt": "x", "sampling_params": {"max_tokens": 0}}, '"max_tokens" must be at least 1, got 0'),
        ({"prompt": "x", "sampling_params": {"temprature": 0}}, 'unknown sampling key "temprature"'),
        ({"prompt": "x", "sampling_params": {"max_tokens": 2}}, '"min_tokens" (4) must not exceed "max_tokens" (2)'),
        ({"prompt": "x", "sampling_params": {"structured_outputs": {"regex": "[a-"}}}, '"regex" is not a regular'),
        ({"prompt": "x", "sampling_params": [1]}, '"sampling_params" of type list'),
    ],
)
def test_bad_overrides_raise_a_row_sampling_error_naming_the_task_file(task, ret: dict, says: str) -> None:
    with pytest.raises(RowSamplingError) as info:
        task.format_prompt({"ret": ret})
    message = str(info.value)
    assert message.startswith(f'{task.config_file}: format_prompt returned "sampling_params"'), message
    assert says in message and "\n" not in message, message


@pytest.mark.parametrize(
    ("ret", "says"),
    [
        ({"promt": "x"}, "got dict with the unknown key 'promt'"),
        ({"prompt": "x", "messages": MESSAGES}, "both of 'prompt' and 'messages'"),
        ({"sampling_params": {}}, "neither of 'prompt' and 'messages'"),
        ({"prompt": 3}, "'prompt' of type int"),
        ({"messages": [{"role": "user"}]}, "'messages' that are not a list"),
    ],
)
def test_a_bad_dict_shape_is_a_value_error_that_row_keeps(task, ret: dict, says: str) -> None:
    with pytest.raises(ValueError, match="format_prompt") as info:
        task.format_prompt({"ret": ret})
    assert not isinstance(info.value, RowSamplingError) and says in str(info.value)
