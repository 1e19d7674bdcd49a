"""One set of sampling parameters per call, or one per prompt: the pure helpers both engines use."""

from __future__ import annotations

import pytest

from llm_infer_dagster.engines.base import per_prompt, sampling_groups


def test_one_mapping_is_one_group_of_every_prompt() -> None:
    params = {"max_tokens": 4}
    assert sampling_groups(params, 3) == [(params, [0, 1, 2])]
    assert per_prompt(params, 2) == [params, params]


def test_per_prompt_parameters_group_by_value_in_first_seen_order() -> None:
    a, b = {"max_tokens": 4, "temperature": 0}, {"max_tokens": 8}
    groups = sampling_groups([a, b, {"temperature": 0, "max_tokens": 4}, b], 4)
    assert groups == [(a, [0, 2]), (b, [1, 3])]


def test_a_count_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="2 sets of sampling parameters for 3 prompts"):
        per_prompt([{}, {}], 3)
