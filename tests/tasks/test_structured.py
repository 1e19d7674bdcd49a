"""structured_outputs: validated when a task (or a row) gives it, before any model loads; and matching a
completion against it. Real jsonschema and real xgrammar, no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.tasks.sampling import load_sampling_params, validate_sampling_params
from llm_infer_dagster.tasks.structured import matches, validate_structured_outputs

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["yes", "no"]}, "n": {"type": "integer"}},
    "required": ["label"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "spec",
    [
        {"json": SCHEMA},
        {"json": SCHEMA, "disable_any_whitespace": True},
        {"regex": r"[a-c]{3}-\d{2}"},
        {"choice": ["red", "green"]},
        {"grammar": 'root ::= "A" | "B" "C"'},
    ],
)
def test_each_kind_is_accepted_as_given(spec: dict) -> None:
    assert validate_structured_outputs(spec, "f.json") == spec


def test_a_schema_string_is_parsed_and_null_means_none() -> None:
    assert validate_structured_outputs({"json": json.dumps(SCHEMA)}, "f.json") == {"json": SCHEMA}
    assert validate_structured_outputs(None, "f.json") is None


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"json": {"type": "integr"}}, '"json" is not a valid JSON schema at type'),
        ({"json": {"type": "object", "required": "label"}}, '"json" is not a valid JSON schema at required'),
        ({"json": "{not json"}, '"json" is a string that is not JSON'),
        ({"json": [1]}, '"json" must be a JSON schema object, got list'),
        ({"regex": "[a-"}, '"regex" is not a regular expression xgrammar can use'),
        ({"grammar": 'root ::= "A" | '}, '"grammar" is not a EBNF grammar xgrammar can use'),
        ({"grammar": ""}, '"grammar" must be a non-empty string'),
        ({"choice": []}, '"choice" must be a non-empty list of non-empty strings'),
        ({"choice": ["a", 3]}, '"choice" must be a non-empty list of non-empty strings'),
        ({"choice": ["a"], "regex": "a"}, "must hold exactly one of json, regex, choice, grammar (got regex, choice)"),
        ({}, "must hold exactly one of json, regex, choice, grammar (got none)"),
        ({"jsn": SCHEMA}, 'unknown key "jsn"'),
        ({"regex": "a", "disable_any_whitespace": True}, '"disable_any_whitespace" must be true or false, and goes'),
        ("a|b", "must be an object such as"),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_source_and_key(spec: object, says: str) -> None:
    with pytest.raises(TaskConfigError) as info:
        validate_structured_outputs(spec, "/t/sampling_params.json")
    message = str(info.value)
    assert message.startswith('/t/sampling_params.json: "structured_outputs"'), message
    assert says in message and "\n" not in message, message


def test_an_invalid_schema_in_sampling_params_json_fails_the_task_load(tmp_path: Path) -> None:
    (tmp_path / "sampling_params.json").write_text(json.dumps({"structured_outputs": {"json": {"type": "integr"}}}))
    with pytest.raises(TaskConfigError, match=r"sampling_params.json: \"structured_outputs\": \"json\" is not a valid"):
        load_sampling_params(None, tmp_path)


def test_sampling_params_keep_their_order_and_the_normalised_spec() -> None:
    out = validate_sampling_params({"structured_outputs": {"json": json.dumps(SCHEMA)}, "max_tokens": 5}, "f")
    assert list(out) == ["structured_outputs", "max_tokens"]
    assert out["structured_outputs"] == {"json": SCHEMA}


def test_no_structured_outputs_key_leaves_the_parameters_as_they_were() -> None:
    assert validate_sampling_params({"temperature": 0, "max_tokens": 5}, "f") == {"temperature": 0.0, "max_tokens": 5}


def test_matches_each_kind() -> None:
    assert matches({"json": SCHEMA}, '{"label": "yes", "n": 3}')
    assert not matches({"json": SCHEMA}, '{"label": "maybe"}')  # parses, does not validate
    assert not matches({"json": SCHEMA}, '{"label": "yes"')  # cut short: does not parse
    assert matches({"choice": ["red", "green"]}, "red") and not matches({"choice": ["red"]}, "red ")
    assert matches({"regex": r"[a-c]{3}-\d{2}"}, "abc-12") and not matches({"regex": r"[a-c]{3}-\d{2}"}, "abc-1")
    assert matches({"grammar": 'root ::= "A" | "B" "C"'}, "BC") and not matches({"grammar": 'root ::= "A"'}, "AA")
    assert not matches({"choice": ["a"]}, None)
