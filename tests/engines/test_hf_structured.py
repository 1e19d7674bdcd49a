"""Structured outputs and per-prompt sampling on the real HF engine (xgrammar) with the tiny model."""

from __future__ import annotations

import json

import pytest
from structured_cases import CASES, CHAT, PROMPTS, SCHEMA

from llm_infer_dagster.engines.hf import HFEngine
from llm_infer_dagster.tasks.structured import matches

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tiny_model_path: str) -> HFEngine:
    return HFEngine(tiny_model_path, device="cpu", max_model_len=256, batch_size=3)


@pytest.mark.parametrize("kind", list(CASES))
def test_every_completion_satisfies_the_constraint(engine: HFEngine, kind: str) -> None:
    spec, max_tokens = CASES[kind]
    out = engine.generate([*PROMPTS, *CHAT], {"temperature": 0, "max_tokens": max_tokens, "structured_outputs": spec})
    assert all(c.error is None for c in out)
    assert all(matches(spec, c.response) for c in out), [c.response for c in out]
    if kind == "json":
        assert all(json.loads(c.response or "")["label"] in ("yes", "no", "maybe") for c in out)
    if kind == "choice":
        assert {c.response for c in out} <= {"red", "green", "blue"}


def test_sampled_and_n_samples_all_satisfy_it(engine: HFEngine) -> None:
    spec = {"json": SCHEMA, "disable_any_whitespace": True}
    sampling = {"temperature": 1.0, "n": 3, "seed": 3, "max_tokens": 64, "structured_outputs": spec}
    out = engine.generate(PROMPTS, sampling)
    assert all(len(c.responses) == 3 and all(matches(spec, r) for r in c.responses) for c in out)


def test_a_prompts_own_parameters_apply_to_it_alone(engine: HFEngine) -> None:
    base = {"temperature": 0, "max_tokens": 12}
    alone = engine.generate(PROMPTS, base)
    mixed = engine.generate(
        PROMPTS, [base, {**base, "max_tokens": 2}, {**base, "structured_outputs": {"choice": ["x", "y"]}}, base]
    )
    assert mixed[1].completion_tokens <= 2 and alone[1].completion_tokens > 2
    assert mixed[2].response in ("x", "y") and alone[2].response not in ("x", "y")
    for i in (0, 3):  # the others generate as they would alone (greedy)
        assert mixed[i].responses == alone[i].responses
