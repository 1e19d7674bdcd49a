"""The seed's --model_args keys that have their own flag here (issue 8): merged, or refused in one line."""

from __future__ import annotations

import pytest

from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.tasks.seed_flags import merge_model_args

NOT_GIVEN = {"tensor_parallel_size": None, "max_model_len": None, "dtype": None, "trust_remote_code": None}


def test_keys_only_in_model_args_become_their_flags_and_leave_the_engine_args() -> None:
    flags, engine = merge_model_args(
        NOT_GIVEN, {"tensor_parallel_size": 2, "max_model_len": 4096, "enforce_eager": True, "dtype": "float16"}
    )
    assert flags == {"tensor_parallel_size": 2, "max_model_len": 4096, "dtype": "float16", "trust_remote_code": False}
    assert engine == {"enforce_eager": True}


def test_flag_defaults_apply_when_neither_gives_a_value() -> None:
    flags, engine = merge_model_args(NOT_GIVEN, {})
    assert flags == {"tensor_parallel_size": 1, "max_model_len": None, "dtype": "auto", "trust_remote_code": False}
    assert engine == {}


def test_the_same_value_in_both_places_is_fine() -> None:
    flags, _ = merge_model_args({**NOT_GIVEN, "tensor_parallel_size": 2}, {"tensor_parallel_size": 2})
    assert flags["tensor_parallel_size"] == 2


@pytest.mark.parametrize(
    ("given", "model_args", "expected"),
    [
        ({"tensor_parallel_size": 2}, {"tensor_parallel_size": 4}, "--model_args sets tensor_parallel_size=4 but"),
        ({"trust_remote_code": True}, {"trust_remote_code": False}, "trust_remote_code=False but --trust_remote_code"),
        ({}, {"max_model_len": "4k"}, "max_model_len must be an integer, got '4k'"),
        ({}, {"tensor_parallel_size": True}, "tensor_parallel_size must be an integer"),
        ({}, {"trust_remote_code": "yes"}, "trust_remote_code must be a bool"),
    ],
)
def test_conflicts_and_wrong_types_are_one_line(given: dict, model_args: dict, expected: str) -> None:
    with pytest.raises(SettingsError, match=expected.replace("(", r"\(").replace("[", r"\[")) as err:
        merge_model_args({**NOT_GIVEN, **given}, model_args)
    assert "\n" not in str(err.value)
