"""Chat prompts with images, turned into what each engine takes.

By the time a prompt reaches an engine, the prompts step (``tasks/images.py``) has checked each image and
named it absolutely: an image part's url is an absolute path, a ``file://`` URL or a ``data:`` URL. Here:

- :func:`split_images` gives the messages to render with the chat template (each image part becomes
  ``{"type": "image"}``, which HF processors' and LLaVA-style templates turn into the image placeholder) and
  the images, decoded as RGB ``PIL`` images, in prompt order;
- vLLM gets the rendered text plus ``multi_modal_data={"image": [...]}`` (its processor expands the
  placeholders into image tokens);
- the HF engine loads a vision-language model with ``AutoProcessor`` and ``AutoModelForImageTextToText``
  (:func:`load_hf_vision`) and encodes each image prompt through the processor (:func:`hf_encode`).

An image that cannot be opened here (deleted since the prompts were made) is that prompt's error, raised as
:class:`ValueError` for the engine to turn into an error ``Completion``.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

__all__ = ["has_images", "hf_encode", "is_vision_model", "load_hf_vision", "open_image", "split_images"]

_IMAGE_TYPES = ("image_url", "image")


def _image_ref(part: Mapping[str, Any]) -> str:
    value = part.get(str(part.get("type", "")))
    if isinstance(value, Mapping):
        value = value.get("url")
    if value is None:
        value = part.get("url")
    if not isinstance(value, str) or not value:
        raise ValueError(f"image part without a url: {dict(part)!r}")
    return value


def has_images(prompt: Any) -> bool:
    """Whether a chat prompt holds an image part."""
    return isinstance(prompt, list) and any(
        isinstance(m, Mapping)
        and isinstance(m.get("content"), list)
        and any(isinstance(p, Mapping) and p.get("type") in _IMAGE_TYPES for p in m["content"])
        for m in prompt
    )


def open_image(ref: str) -> Any:
    """An absolute path, ``file://`` or ``data:`` URL as an RGB ``PIL.Image``; ValueError if it cannot be."""
    from PIL import Image

    try:
        if ref.startswith("data:"):
            data = base64.b64decode(ref.partition(",")[2], validate=True)
        else:
            path = Path(unquote(urlparse(ref).path)) if ref.startswith("file://") else Path(ref)
            data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except Exception as exc:
        shown = ref[:40] + "..." if ref.startswith("data:") else ref
        raise ValueError(f"cannot open image {shown!r}: {type(exc).__name__}: {exc}") from None


def split_images(prompt: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """(messages with each image part as ``{"type": "image"}``, the images decoded, in order)."""
    messages: list[dict[str, Any]] = []
    images: list[Any] = []
    for message in prompt:
        content = message.get("content")
        if not isinstance(content, list):
            messages.append(dict(message))
            continue
        parts: list[dict[str, Any]] = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") in _IMAGE_TYPES:
                images.append(open_image(_image_ref(part)))
                parts.append({"type": "image"})
            else:
                parts.append(dict(part))
        messages.append({**message, "content": parts})
    return messages, images


def is_vision_model(model_path: str) -> bool:
    """Whether the folder holds a vision-language model (its config has a ``vision_config``)."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "vision_config" in config


def load_hf_vision(model_path: str, dtype: Any, trust_remote_code: bool) -> tuple[Any, Any]:
    """(processor, model) of a local vision-language model folder."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
        model_path, local_files_only=True, trust_remote_code=trust_remote_code
    )
    model = AutoModelForImageTextToText.from_pretrained(
        model_path, dtype=dtype, local_files_only=True, trust_remote_code=trust_remote_code
    )
    return processor, model


def hf_encode(processor: Any, prompt: Sequence[Mapping[str, Any]]) -> tuple[list[int], dict[str, Any]]:
    """(token ids with the image tokens expanded, the other model inputs: ``pixel_values``...) of one prompt.

    The chat template writes its own BOS, so the processor adds no special tokens. Raises on a bad image or
    a template the prompt does not fit (the engine makes it the prompt's error).
    """
    messages, images = split_images(prompt)
    template_owner = processor if getattr(processor, "chat_template", None) else processor.tokenizer
    text = template_owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=images or None, return_tensors="pt", add_special_tokens=False)
    ids = [int(t) for t in inputs.pop("input_ids")[0].tolist()]
    inputs.pop("attention_mask", None)
    return ids, dict(inputs)
