"""HFEngine on the real tiny model: batching is invisible, vLLM's stop/length semantics hold.

Random weights make junk text, so the tests compare outputs with each other (batched vs one at a time,
engine vs plain ``model.generate``) and check structure and token counts, never the words.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_infer_dagster.engines.base import Completion
from llm_infer_dagster.engines.hf import HFEngine
from llm_infer_dagster.errors import SettingsError, TaskConfigError

GREEDY = {"temperature": 0, "max_tokens": 24}

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
]


@pytest.fixture(scope="module")
def engine(tiny_model_path: str) -> Iterator[HFEngine]:
    eng = HFEngine(tiny_model_path, batch_size=4)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def reference(tiny_model_path: str) -> tuple[object, object]:
    """The same checkpoint through plain transformers, for independent expected outputs."""
    tok = AutoTokenizer.from_pretrained(tiny_model_path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, local_files_only=True).eval()
    return tok, model


def reference_greedy_ids(reference: tuple, prompt: str, max_new_tokens: int) -> list[int]:
    """One prompt, no padding, plain ``model.generate``: the seed's HF path."""
    tok, model = reference
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


def as_tuple(c: Completion) -> tuple:
    return (c.responses, c.finish_reasons, c.prompt_tokens, c.completion_tokens, c.error)


def test_batched_greedy_equals_one_prompt_at_a_time(engine: HFEngine) -> None:
    batched = engine.generate(PROMPTS, GREEDY)
    single = [engine.generate([p], GREEDY)[0] for p in PROMPTS]
    assert [as_tuple(c) for c in batched] == [as_tuple(c) for c in single]
    assert all(c.error is None and len(c.responses) == 1 for c in batched)


def test_engine_matches_plain_transformers(engine: HFEngine, reference: tuple) -> None:
    tok, _ = reference
    results = engine.generate(PROMPTS[:4], GREEDY)
    for prompt, result in zip(PROMPTS[:4], results, strict=True):
        ids = reference_greedy_ids(reference, prompt, GREEDY["max_tokens"])
        eos = [i for i, t in enumerate(ids) if t in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"))]
        kept = ids[: eos[0]] if eos else ids
        assert result.response == tok.decode(kept, skip_special_tokens=True)
        assert result.completion_tokens == (eos[0] + 1 if eos else len(ids))
        assert result.prompt_tokens == len(tok(prompt)["input_ids"])


def test_input_order_is_restored(engine: HFEngine) -> None:
    forward = engine.generate(PROMPTS, GREEDY)
    backward = engine.generate(PROMPTS[::-1], GREEDY)
    assert [as_tuple(c) for c in backward] == [as_tuple(c) for c in forward[::-1]]
    # prompt_tokens follow the input order, although batches run longest first.
    lengths = [len(engine._tokenizer(p)["input_ids"]) for p in PROMPTS]
    assert [c.prompt_tokens for c in forward] == lengths


def test_n_samples_are_all_kept(engine: HFEngine) -> None:
    results = engine.generate(PROMPTS[:5], {"temperature": 1.0, "top_k": -1, "max_tokens": 8, "n": 3, "seed": 0})
    for c in results:
        assert len(c.responses) == len(c.finish_reasons) == 3
        assert c.completion_tokens <= 3 * 8
        assert len(set(c.responses)) > 1  # three real samples, not one repeated
    # Samples are grouped per prompt: near-zero temperature reproduces each prompt's own greedy output.
    cold = engine.generate(PROMPTS[:5], {"temperature": 1e-4, "max_tokens": 8, "n": 3, "seed": 0})
    greedy_8 = engine.generate(PROMPTS[:5], {"temperature": 0, "max_tokens": 8})
    assert [c.responses for c in cold] == [g.responses * 3 for g in greedy_8]
    # Greedy with n > 1: n identical samples (vLLM's behaviour), counted n times.
    greedy = engine.generate(PROMPTS[:2], {**GREEDY, "n": 2})
    single = engine.generate(PROMPTS[:2], GREEDY)
    for g, s in zip(greedy, single, strict=True):
        assert g.responses == s.responses * 2 and g.completion_tokens == 2 * s.completion_tokens


def test_max_tokens_and_length_finish(engine: HFEngine) -> None:
    results = engine.generate(PROMPTS, {"temperature": 0, "max_tokens": 5})
    for c in results:
        if c.finish_reasons == ["length"]:
            assert c.completion_tokens == 5
        else:  # the random model happened to emit EOS
            assert c.finish_reasons == ["stop"] and c.completion_tokens <= 5
    assert "length" in {c.finish_reasons[0] for c in results}


def pick_stop(text: str) -> str:
    """A short ASCII word from the middle of a greedy output, to use as stop string."""
    for match in re.finditer(r"[A-Za-z0-9]{2,}", text):
        if match.start() >= 3:
            return match.group()[:3]
    pytest.skip(f"no usable stop string in {text!r}")


@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_stop_string_is_cut_and_stripped(engine: HFEngine, prompt: str) -> None:
    free = engine.generate([prompt], {"temperature": 0, "max_tokens": 32})[0]
    stop = pick_stop(free.response)
    cut = free.response.index(stop)

    stopped = engine.generate([prompt], {"temperature": 0, "max_tokens": 32, "stop": [stop, "never-seen"]})[0]
    assert stopped.response == free.response[:cut]
    assert stop not in stopped.response
    assert stopped.finish_reasons == ["stop"]
    assert 0 < stopped.completion_tokens <= free.completion_tokens

    kept = engine.generate(
        [prompt], {"temperature": 0, "max_tokens": 32, "stop": stop, "include_stop_str_in_output": True}
    )
    assert kept[0].response == free.response[: cut + len(stop)]
    assert kept[0].completion_tokens == stopped.completion_tokens


def test_stop_string_in_a_batch_does_not_leak_padding(engine: HFEngine) -> None:
    free = engine.generate(PROMPTS, GREEDY)
    stop = pick_stop(free[0].response)
    batched = engine.generate(PROMPTS, {**GREEDY, "stop": stop})
    single = [engine.generate([p], {**GREEDY, "stop": stop})[0] for p in PROMPTS]
    assert [as_tuple(c) for c in batched] == [as_tuple(c) for c in single]
    for f, b in zip(free, batched, strict=True):
        if stop in f.response:
            assert b.response == f.response[: f.response.index(stop)] and b.finish_reasons == ["stop"]
        else:
            assert b.response == f.response and b.finish_reasons == f.finish_reasons


def test_stop_token_ids_and_ignore_eos(tiny_model_path: str, reference: tuple) -> None:
    tok, _ = reference
    ids = reference_greedy_ids(reference, PROMPTS[0], 24)
    pos = next(i for i in range(3, len(ids)) if ids[i] not in ids[:i])
    expected_text = tok.decode(ids[:pos], skip_special_tokens=True)

    eng = HFEngine(tiny_model_path)
    try:
        by_stop_id = eng.generate([PROMPTS[0]], {"temperature": 0, "max_tokens": 24, "stop_token_ids": [ids[pos]]})[0]
        assert (by_stop_id.response, by_stop_id.finish_reasons) == (expected_text, ["stop"])
        assert by_stop_id.completion_tokens == pos + 1  # the stop token counts, its text is dropped

        eng._eos_ids = [ids[pos]]  # pretend that token is the model's EOS
        by_eos = eng.generate([PROMPTS[0]], {"temperature": 0, "max_tokens": 24})[0]
        assert (by_eos.response, by_eos.finish_reasons, by_eos.completion_tokens) == (
            expected_text,
            ["stop"],
            pos + 1,
        )
        ignored = eng.generate([PROMPTS[0]], {"temperature": 0, "max_tokens": 24, "ignore_eos": True})[0]
        assert ignored.finish_reasons == ["length"] and ignored.completion_tokens == 24
    finally:
        eng.close()


def test_too_long_prompt_is_an_error_and_the_rest_succeed(engine: HFEngine) -> None:
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 80
    results = engine.generate(["Hello", long_prompt, "ok"], GREEDY)
    assert results[0].error is None and results[2].error is None and results[0].response is not None
    err = results[1]
    assert err.responses == [] and err.response is None
    assert re.fullmatch(r"prompt is \d+ tokens; the model accepts at most 512 \(max_model_len\).*", err.error)
    assert err.prompt_tokens > 512


def test_max_tokens_capped_by_max_model_len(tiny_model_path: str) -> None:
    eng = HFEngine(tiny_model_path, max_model_len=40, batch_size=8)
    try:
        # 43, 29, 3, 22, 29 and 6 tokens: one too long, two with less room than max_tokens.
        prompts = ["What is 3 + 4? " * 6, "What is 3 + 4? " * 4, "Hi", "What is 3 + 4? " * 3]
        prompts += ["What is 5 + 6? " * 4, "Hello there"]
        params = {"temperature": 0, "max_tokens": 16, "ignore_eos": True}
        batched = eng.generate(prompts, params)
        single = [eng.generate([p], params)[0] for p in prompts]
        assert [as_tuple(c) for c in batched] == [as_tuple(c) for c in single]
        assert batched[0].error is not None and "at most 40" in batched[0].error
        for c in batched[1:]:
            assert c.finish_reasons == ["length"]
            assert c.completion_tokens == min(16, 40 - c.prompt_tokens)
        assert batched[1].completion_tokens < 16  # the long prompt really was capped
    finally:
        eng.close()


def test_chat_prompts(engine: HFEngine) -> None:
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 + 4?"}]
    results = engine.generate([chat, "What is 3 + 4?", [{"role": "user", "content": "Hi"}]], GREEDY)
    assert all(c.error is None and c.response is not None for c in results)
    tok = engine._tokenizer
    rendered = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert results[0].prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert results[0].response != results[1].response  # the template changed the input
    # As plain text the rendered chat would get a second BOS: chat prompts skip the tokenizer's specials.
    assert engine.generate([rendered], GREEDY)[0].prompt_tokens == results[0].prompt_tokens + 1


def test_bad_prompts_become_errors(engine: HFEngine) -> None:
    results = engine.generate(["", 42, "ok", {"role": "user"}], GREEDY)  # type: ignore[list-item]
    assert results[0].error is None and results[0].prompt_tokens == 1  # just the BOS, as in vLLM
    assert "must be a string or a list of chat messages, got int" in results[1].error
    assert results[2].error is None
    assert "got dict" in results[3].error


def test_seed_makes_sampling_reproducible(engine: HFEngine) -> None:
    params = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 12, "n": 2, "seed": 123}
    first = engine.generate(PROMPTS[:5], params)
    again = engine.generate(PROMPTS[:5], params)
    other = engine.generate(PROMPTS[:5], {**params, "seed": 124})
    assert [c.responses for c in first] == [c.responses for c in again]
    assert [c.responses for c in first] != [c.responses for c in other]


def test_unsupported_key_raises_before_generating(engine: HFEngine) -> None:
    with pytest.raises(TaskConfigError, match=r'"presence_penalty".*--model_type vllm'):
        engine.generate(PROMPTS, {"temperature": 0, "presence_penalty": 0.5})


def test_token_counts_are_consistent(engine: HFEngine) -> None:
    results = engine.generate(PROMPTS, {"temperature": 1.0, "max_tokens": 10, "n": 2, "seed": 5})
    tok = engine._tokenizer
    for prompt, c in zip(PROMPTS, results, strict=True):
        assert c.prompt_tokens == len(tok(prompt)["input_ids"])
        assert 2 <= c.completion_tokens <= 20
        if c.finish_reasons == ["length", "length"]:
            assert c.completion_tokens == 20


def test_close_releases_the_model(tiny_model_path: str) -> None:
    eng = HFEngine(tiny_model_path)
    eng.close()
    eng.close()  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        eng.generate(["Hello"], GREEDY)


def test_chat_prompt_without_chat_template_is_a_config_error(tiny_model_path: str, tmp_path: Path) -> None:
    plain = tmp_path / "no-template"
    shutil.copytree(tiny_model_path, plain)
    (plain / "chat_template.jinja").unlink()
    eng = HFEngine(str(plain))
    try:
        assert eng.generate(["Hello"], GREEDY)[0].error is None
        with pytest.raises(TaskConfigError, match="no chat template; return a string from format_prompt"):
            eng.generate([[{"role": "user", "content": "Hi"}]], GREEDY)
    finally:
        eng.close()


def test_missing_model_folder_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"cannot load model from .*nowhere"):
        HFEngine(str(tmp_path / "nowhere"))


def test_checkpoint_sampling_defaults_are_ignored(tiny_model_path: str, tmp_path: Path) -> None:
    """Missing keys mean vLLM's defaults, not the checkpoint's generation_config (as with vLLM SamplingParams)."""
    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_model_path, tuned)
    config = json.loads((tuned / "generation_config.json").read_text())
    # Knobs the engine does not pass explicitly; HF would otherwise fill them in from the checkpoint.
    config.update(do_sample=True, top_k=1, min_p=0.9, no_repeat_ngram_size=1, max_new_tokens=2)
    (tuned / "generation_config.json").write_text(json.dumps(config))

    plain, eng = HFEngine(tiny_model_path), HFEngine(str(tuned))
    try:
        assert [c.responses for c in eng.generate(PROMPTS[:3], GREEDY)] == [
            c.responses for c in plain.generate(PROMPTS[:3], GREEDY)
        ]
        sampled = eng.generate(PROMPTS[:2], {"temperature": 1.0, "max_tokens": 8, "n": 4, "seed": 0})
        assert all(len(set(c.responses)) > 1 for c in sampled)  # min_p=0.9 would make them (nearly) identical
        assert all(c.completion_tokens > 4 * 2 for c in sampled)  # max_new_tokens=2 did not apply
    finally:
        eng.close()
        plain.close()


def test_code_in_the_model_folder_runs_only_when_trusted(tmp_path: Path, tiny_model_path: str) -> None:
    """trust_remote_code is off by default: a model folder's own Python (auto_map) is never imported."""
    folder = tmp_path / "model-with-code"
    shutil.copytree(tiny_model_path, folder)
    marker = tmp_path / "REMOTE_CODE_RAN"
    (folder / "custom_config.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig\n\n\n"
        "class CustomConfig(LlamaConfig):\n"
        "    pass\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom_config.CustomConfig"}
    (folder / "config.json").write_text(json.dumps(config))

    HFEngine(str(folder)).close()  # the default: loads as the plain Llama it says it is
    assert not marker.exists()
    with contextlib.suppress(SettingsError):  # whether the custom class then loads does not matter here
        HFEngine(str(folder), trust_remote_code=True).close()
    assert marker.read_text() == "ran"  # asked for: the folder's code did run (so the check above means something)


def test_max_input_length_makes_longer_prompts_error_rows(engine: HFEngine, tiny_model_path: str) -> None:
    prompts = ["ok", "Hello there, how are you?", "The quick brown fox jumps over the lazy dog. " * 3]
    counts = [c.prompt_tokens for c in engine.generate(prompts, GREEDY)]
    assert counts[0] < counts[1] < counts[2]
    capped = HFEngine(tiny_model_path, batch_size=4, max_input_length=counts[1])  # exactly counts[1] is allowed
    try:
        results = capped.generate(prompts, GREEDY)
    finally:
        capped.close()
    assert [r.error for r in results[:2]] == [None, None] and results[1].responses
    assert results[2].responses == [] and results[2].prompt_tokens == counts[2]
    assert results[2].error == (
        f"prompt is {counts[2]} tokens, longer than the {counts[1]} allowed (--max_input_length)"
    )


def test_max_input_length_below_one_is_refused_before_loading(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"--max_input_length must be at least 1"):
        HFEngine(str(tmp_path / "nowhere"), max_input_length=0)
