"""Continuous batching in the HF engine (issue 21): rows leave the batch when done, queued prompts take their
slots, and greedy fp32 outputs stay those of a bare ``model.generate`` per prompt.

Random weights make junk text, so rows are made to finish at different times by their own ``max_tokens``
and by stop tokens picked from each prompt's reference output.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_infer_dagster.engines.base import Completion
from llm_infer_dagster.engines.hf import HFEngine
from llm_infer_dagster.engines.hf_continuous import ContinuousDecoder, Request, Sampler, unsupported_reason

pytestmark = pytest.mark.slow  # a real (tiny) model, and a bare generate per prompt as the reference

PROMPTS = [
    "What is 3 + 4?",
    "Hello",
    "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is",
    "Translate the sentence into French, then into German.",
    "Q: Which city is the capital of Peru? A:",
    "A journey of a thousand miles begins with a single step. " * 4,
    "7 minus 2 equals",
    "Think step by step, then write the final answer on the last line. What is 12 * 3?",
    "ok",
    "The sky is blue and the grass is green; snow is",
    "Spain: Madrid. Japan:",
    "Count: one, two, three,",
]
BUDGETS = [1, 37, 5, 60, 12, 2, 44, 9, 25, 3, 51, 17]  # max_tokens per prompt: rows end at different steps


@pytest.fixture(scope="module")
def reference(tiny_model_path: str) -> tuple[Any, Any]:
    tok = AutoTokenizer.from_pretrained(tiny_model_path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, local_files_only=True, dtype=torch.float32).eval()
    return tok, model


def bare_generate(reference: tuple[Any, Any], prompt: str, max_new_tokens: int, eos: list[int]) -> list[int]:
    """One prompt, no padding, plain ``model.generate``, greedy: the new token ids up to the first of ``eos``."""
    tok, model = reference
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=3)
    new = out[0, ids.shape[1] :].tolist()
    end = next((k for k, t in enumerate(new) if t in eos), None)
    return new if end is None else new[: end + 1]


def expected(reference: tuple[Any, Any], tokens: list[int], eos: list[int]) -> tuple[str, str, int]:
    """(text, finish reason, new tokens) the engine must report for these reference tokens."""
    tok, _ = reference
    stopped = bool(tokens) and tokens[-1] in eos
    text = tok.decode(tokens[:-1] if stopped else tokens, skip_special_tokens=True)
    return text, "stop" if stopped else "length", len(tokens)


def got(c: Completion) -> tuple[str, str, int]:
    assert c.error is None and len(c.responses) == 1, c
    return c.responses[0], c.finish_reasons[0], c.completion_tokens


@pytest.fixture(scope="module")
def stop_tokens(reference: tuple[Any, Any]) -> list[int]:
    """Per prompt, a token of its own greedy output at a varied position (its first occurrence there)."""
    picks = []
    for i, prompt in enumerate(PROMPTS):
        ids = bare_generate(reference, prompt, 64, [2])
        fresh = [k for k in range(1, len(ids)) if ids[k] not in ids[:k] and ids[k] != 2]
        picks.append(ids[fresh[(i * 5) % len(fresh)]] if fresh else 2)
    return picks


@pytest.mark.parametrize("batch_size", [1, 3, 5, 32])
def test_greedy_equals_bare_generate_per_prompt(
    reference: tuple[Any, Any], tiny_model_path: str, batch_size: int
) -> None:
    """Per-prompt max_tokens: every row ends at its own step, so slots free up and are refilled mid-run."""
    engine = HFEngine(tiny_model_path, batch_size=batch_size)
    try:
        results = engine.generate(PROMPTS, [{"temperature": 0, "max_tokens": b} for b in BUDGETS])
    finally:
        engine.close()
    eos = engine._eos_ids
    want = [
        expected(reference, bare_generate(reference, p, b, eos), eos) for p, b in zip(PROMPTS, BUDGETS, strict=True)
    ]
    assert [got(c) for c in results] == want
    assert {w[2] for w in want} != {want[0][2]}  # the rows really did end at different steps


@pytest.mark.parametrize("batch_size", [2, 4, 32])
def test_stop_tokens_end_rows_early_and_match_bare_generate(
    reference: tuple[Any, Any], tiny_model_path: str, stop_tokens: list[int], batch_size: int
) -> None:
    engine = HFEngine(tiny_model_path, batch_size=batch_size)
    try:
        params = [{"temperature": 0, "max_tokens": 64, "stop_token_ids": [t]} for t in stop_tokens]
        results = engine.generate(PROMPTS, params)
    finally:
        engine.close()
    want = []
    for prompt, stop in zip(PROMPTS, stop_tokens, strict=True):
        eos = [*engine._eos_ids, stop]
        want.append(expected(reference, bare_generate(reference, prompt, 64, eos), eos))
    assert [got(c) for c in results] == want
    assert sum(w[1] == "stop" for w in want) >= len(PROMPTS) - 2
    assert len({w[2] for w in want}) > 4


class CountingModel(torch.nn.Module):
    """The model, recording the batch rows and input width of every forward."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple[int, int]] = []

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(self, **kwargs: Any) -> Any:
        self.calls.append(tuple(kwargs["input_ids"].shape))  # type: ignore[arg-type]
        return self.model(**kwargs)


def greedy_request(tok: Any, prompt: str, max_new: int) -> Request:
    return Request(ids=tok(prompt)["input_ids"], max_new=max_new, sampler=Sampler({"do_sample": False}))


def test_the_batch_is_refilled_and_never_waits_for_its_longest_row(reference: tuple[Any, Any]) -> None:
    """One long row and many short ones: a static batch of 4 would decode the long row's 40 steps with
    3 idle rows; here short rows keep taking the free slots, and the run takes about 40 steps in all."""
    tok, model = reference
    counting = CountingModel(model)
    decoder = ContinuousDecoder(counting, torch.device("cpu"), capacity=4, refill_at=1)
    decoder._keep_last = {"logits_to_keep": 1}
    requests = [greedy_request(tok, PROMPTS[0], 40)] + [greedy_request(tok, p, 3) for p in PROMPTS[1:]]
    out = decoder.run(requests, order=range(len(requests)))

    assert [len(s[0]) for s in out] == [40] + [3] * (len(PROMPTS) - 1)  # no terminators: max_new each
    decode_steps = [rows for rows, width in counting.calls if width == 1]
    assert max(rows for rows, _ in counting.calls) <= 4
    assert len(decode_steps) == 39  # the long row's steps after its prefill; the short ones ran alongside
    assert decode_steps[:8].count(4) >= 6  # full while prompts were queued
    assert decode_steps[-5:] == [1] * 5  # then the batch shrank to the one row still running
    for request, prompt, samples in zip(requests, PROMPTS, out, strict=True):  # and nothing changed the outputs
        assert samples[0] == bare_generate(reference, prompt, request.max_new, [])


def test_a_new_prompt_longer_than_the_running_cache_is_merged_correctly(reference: tuple[Any, Any]) -> None:
    """Shortest first: each admitted prompt is wider than the running cache, which is left-padded to it."""
    tok, model = reference
    decoder = ContinuousDecoder(model, torch.device("cpu"), capacity=3, refill_at=1)
    requests = [greedy_request(tok, p, b) for p, b in zip(PROMPTS, BUDGETS, strict=True)]
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].ids))
    out = decoder.run(requests, order=order)
    for request, prompt, samples in zip(requests, PROMPTS, out, strict=True):
        assert samples[0] == bare_generate(reference, prompt, request.max_new, [])


@pytest.fixture(scope="module")
def engine(tiny_model_path: str) -> Iterator[HFEngine]:
    eng = HFEngine(tiny_model_path, batch_size=4)
    yield eng
    eng.close()


def static(engine: HFEngine, prompts: list[str], params: dict[str, Any]) -> list[Completion]:
    """The engine's static path (``generate`` on padded batches), one prompt at a time: no padding at all."""
    return [engine._generate_group([p], params, None)[0] for p in prompts]


def as_tuple(c: Completion) -> tuple[Any, ...]:
    return (c.responses, c.finish_reasons, c.prompt_tokens, c.completion_tokens, c.error)


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0, "max_tokens": 30, "min_tokens": 6, "stop_token_ids": [2]},
        {"temperature": 0, "max_tokens": 30, "repetition_penalty": 1.3},
        {"temperature": 0, "max_tokens": 30, "ignore_eos": True},
        {"temperature": 0, "max_tokens": 30, "skip_special_tokens": False},
        {"temperature": 0, "max_tokens": 20, "n": 3},
    ],
    ids=["min_tokens", "repetition_penalty", "ignore_eos", "special_tokens", "greedy_n"],
)
def test_each_option_matches_the_static_path(engine: HFEngine, params: dict[str, Any]) -> None:
    continuous = engine.generate(PROMPTS, params)
    assert [as_tuple(c) for c in continuous] == [as_tuple(c) for c in static(engine, PROMPTS, params)]


def test_stop_strings_per_prompt_match_the_static_path(engine: HFEngine) -> None:
    free = engine.generate(PROMPTS, {"temperature": 0, "max_tokens": 40})
    params: list[dict[str, Any]] = []
    for i, c in enumerate(free):
        text = c.response or ""
        stop = text[len(text) // 3 : len(text) // 3 + 2].strip() or "zzz"
        params.append(
            {"temperature": 0, "max_tokens": 40, "stop": [stop, "never"], "include_stop_str_in_output": i % 2 == 1}
        )
    continuous = engine.generate(PROMPTS, params)
    assert [as_tuple(c) for c in continuous] == [
        as_tuple(static(engine, [p], q)[0]) for p, q in zip(PROMPTS, params, strict=True)
    ]
    cut = [c for c, f in zip(continuous, free, strict=True) if c.completion_tokens < f.completion_tokens]
    assert len(cut) >= len(PROMPTS) // 2 and all(c.finish_reasons == ["stop"] for c in cut)


def test_seeded_samples_do_not_depend_on_the_batch(tiny_model_path: str) -> None:
    params = {"temperature": 1.0, "top_p": 0.9, "top_k": 40, "max_tokens": 8, "n": 3, "seed": 7}
    runs = []
    for batch_size in (2, 5, 32):  # 2: fewer slots than a prompt's samples, so that prompt runs alone
        eng = HFEngine(tiny_model_path, batch_size=batch_size)
        try:
            runs.append([c.responses for c in eng.generate(PROMPTS, params)])
            alone = eng.generate(PROMPTS[3:4], params)[0].responses
        finally:
            eng.close()
        assert alone == runs[-1][3]
    assert runs[0] == runs[1] == runs[2]
    assert all(len(r) == 3 and len(set(r)) > 1 for r in runs[0])  # three real samples each


def test_structured_outputs_and_plain_prompts_in_one_call(engine: HFEngine) -> None:
    base = {"temperature": 0, "max_tokens": 12}
    choice = {**base, "structured_outputs": {"choice": ["x", "y"]}}
    mixed = engine.generate(PROMPTS[:4], [base, choice, base, choice])
    alone = engine.generate(PROMPTS[:4], base)
    assert mixed[1].response in ("x", "y") and mixed[3].response in ("x", "y")
    assert [mixed[0].responses, mixed[2].responses] == [alone[0].responses, alone[2].responses]


def test_without_the_loop_the_engine_uses_static_batches(tiny_model_path: str) -> None:
    eng = HFEngine(tiny_model_path, batch_size=4)
    try:
        params = [{"temperature": 0, "max_tokens": b} for b in BUDGETS]
        continuous = eng.generate(PROMPTS, params)
        eng._continuous = None  # as for a model the loop cannot drive
        assert [as_tuple(c) for c in eng.generate(PROMPTS, params)] == [as_tuple(c) for c in continuous]
    finally:
        eng.close()


def test_unsupported_models_are_named(reference: tuple[Any, Any]) -> None:
    _, model = reference
    assert unsupported_reason(model) is None
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.layer_types = ["full_attention", "linear_attention"]

    class Hybrid:
        def __init__(self) -> None:
            self.config = config
            self.forward = model.forward

    assert unsupported_reason(Hybrid()) == "layers of type linear_attention"

    class NoPositions(Hybrid):
        def __init__(self) -> None:
            super().__init__()
            config.layer_types = None
            self.forward = lambda input_ids, attention_mask=None, past_key_values=None: None

    assert unsupported_reason(NoPositions()) == "NoPositions.forward takes no position_ids"


def test_small_shards_share_a_batch_and_keep_their_outputs(engine: HFEngine) -> None:
    """The worker's stream joins queued shards into one ``generate`` (one-row shards: one forward for several),
    with each shard's completions those it gets alone: greedy and seeded sampling, per-row parameters."""
    from llm_infer_dagster.engines.base import BlockingStream

    greedy = {"temperature": 0, "max_tokens": 9}
    seeded = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 6, "n": 2, "seed": 11}
    shards = {
        "a": (PROMPTS[:1], greedy),
        "b": (PROMPTS[1:2], seeded),
        "c": (PROMPTS[2:5], [greedy, seeded, {**greedy, "max_tokens": 3}]),
        "d": (PROMPTS[5:6], greedy),
    }
    alone = {tag: [as_tuple(c) for c in engine.generate(p, s)] for tag, (p, s) in shards.items()}
    stream = BlockingStream(engine)
    for tag, (p, s) in shards.items():
        stream.submit(tag, p, s)
    assert stream.upcoming() == ["a", "b", "c", "d"]  # what a failure in the next step would be pinned on
    calls: list[int] = []
    real = engine.generate

    def counted(prompts: Any, sampling: Any, **kw: Any) -> list[Completion]:
        calls.append(len(prompts))
        return real(prompts, sampling, **kw)

    engine.generate = counted  # type: ignore[method-assign]
    try:
        joined = {tag: [as_tuple(c) for c in out] for tag, out in stream.step()}
    finally:
        del engine.generate
    assert calls == [6] and not stream.has_pending()
    assert joined == alone
    # a shard with structured outputs (static batches, reseeded per batch) runs alone, and stops a join
    choice = {**greedy, "structured_outputs": {"choice": ["x", "y"]}}
    for tag, p, s in (("e", PROMPTS[:1], greedy), ("f", PROMPTS[1:2], choice), ("g", PROMPTS[2:3], greedy)):
        stream.submit(tag, p, s)
    assert stream.upcoming() == ["e"]
    assert [tag for tag, _ in stream.step()] == ["e"]
    assert [tag for tag, _ in stream.step()] == ["f"] and [tag for tag, _ in stream.step()] == ["g"]
    assert stream.wants_more()  # nothing queued: room for a batch
    stream.submit("h", PROMPTS[:3], greedy)
    assert stream.wants_more()  # 3 rows queued, width 4
    stream.submit("i", PROMPTS[3:4], greedy)
    assert not stream.wants_more()  # a batch's worth queued: no more shards asked for
