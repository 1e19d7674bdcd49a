"""Build a tiny real vision-language model (LLaVA architecture) on disk, with no model hub.

Image prompts need a model that loads through the same code paths as a real VLM (``AutoProcessor`` +
``AutoModelForImageTextToText`` on HF, vLLM's LLaVA) and builds in seconds offline. This reuses the tiny
text model's tokenizer (``tiny_model.py``) plus an ``<image>`` token, a CLIP image processor made from its
defaults (the PIL one: torchvision is not needed), a chat template that writes ``<image>`` for each image
part, and a seeded random-weight ``LlavaForConditionalGeneration`` (a 2-layer CLIP vision tower on 32x32
images, 4 image tokens each, and a 2-layer Llama). The weights are random: the text is junk, but the
processor, the image token expansion and the generation loop are real.

CLI: ``python -m llm_infer_dagster.testing.tiny_vlm PATH [--seed N]`` prints PATH.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from llm_infer_dagster.testing.tiny_model import (
    EOS,
    IM_END,
    MARKER_FILE,
    _build_tokenizer,
    _move_into_place,
    _read_marker,
)

__all__ = ["IMAGE_SIZE", "IMAGE_TOKEN", "IMAGE_TOKENS_PER_IMAGE", "VLM_CHAT_TEMPLATE", "build_tiny_vlm", "main"]

_BUILD_VERSION = 1
IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 32  # pixels (square, after resize and crop)
_PATCH = 16
#: (32 / 16)^2 patches; the CLS feature is dropped ("default" feature selection).
IMAGE_TOKENS_PER_IMAGE = (IMAGE_SIZE // _PATCH) ** 2

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
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = _build_tokenizer(512, 512)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})  # type: ignore[dict-item]
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped by "default"
        chat_template=VLM_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
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
        initializer_range=0.2,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=_PATCH,
        projection_dim=64,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).to(torch.float32)  # type: ignore[arg-type]
        with torch.no_grad():  # peaky logits (as tiny_model): greedy is not decided by rounding noise
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
    assert tokenizer.eos_token == EOS


def build_tiny_vlm(path: Path, seed: int = 0) -> Path:
    """Build (or reuse) the tiny VLM at ``path``; deterministic for the same seed, written atomically."""
    path = Path(path)
    params = {"version": _BUILD_VERSION, "arch": "llava", "seed": seed}
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
        description="Build a tiny random-weight LLaVA (vision-language) model with a real processor.",
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_vlm(args.path, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
