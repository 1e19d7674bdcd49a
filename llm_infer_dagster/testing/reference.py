"""What a user's own script gets from the bare libraries, to hold the platform's completions against.

Greedy decoding, one prompt at a time, the libraries' documented calls and nothing of this package:

- :func:`transformers_greedy`: ``model.generate`` per prompt (plain text tokenized as the tokenizer does by
  default; chat messages through ``apply_chat_template(..., add_generation_prompt=True)``), decoded without
  special tokens, cut before the first ``stop`` string (vLLM's rule; ``generate`` itself keeps it);
- :func:`vllm_greedy`: ``LLM.generate`` for plain text and ``LLM.chat`` for messages, with ``stop``.

Used by the real-model tests and ``benchmarks/real_model_vs_bare.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Prompt", "cut_at_stop", "transformers_greedy", "vllm_greedy"]

#: A plain-text prompt, or chat messages ``[{"role", "content"}]``.
Prompt = str | Sequence[Mapping[str, str]]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (without) the earliest occurrence of any ``stop`` string."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


def transformers_greedy(
    model_dir: str, prompts: Sequence[Prompt], max_tokens: int, stop: Sequence[str], batch_size: int = 1
) -> list[str]:
    """Greedy fp32 completions of a bare transformers loop (see the module docstring), ``batch_size`` prompts
    per ``generate`` call in input order (left-padded, as the transformers docs show for batches)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = [
        p
        if isinstance(p, str)
        else str(tokenizer.apply_chat_template([dict(m) for m in p], tokenize=False, add_generation_prompt=True))
        for p in prompts
    ]
    out = []
    for start in range(0, len(texts), batch_size):
        batch, kinds = texts[start : start + batch_size], prompts[start : start + batch_size]
        # plain text as the tokenizer does by default; a rendered chat template already holds its special tokens
        encoded = [
            tokenizer(t, add_special_tokens=isinstance(k, str)).input_ids for t, k in zip(batch, kinds, strict=True)
        ]
        inputs = tokenizer.pad({"input_ids": encoded}, return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(
                **inputs, max_new_tokens=max_tokens, do_sample=False, top_k=None, top_p=None,
                pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        width = inputs["input_ids"].shape[1]
        for row in generated:
            text = str(tokenizer.decode(row[width:], skip_special_tokens=True))
            out.append(cut_at_stop(text, stop))
    return out


def vllm_greedy(
    model_dir: str, prompts: Sequence[Prompt], max_tokens: int, stop: Sequence[str], **llm_args: Any
) -> list[str]:
    """Greedy completions of bare vLLM (``llm_args`` go to ``vllm.LLM``, e.g. ``enforce_eager``)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, dtype="float32", **llm_args)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, stop=list(stop))
    out: list[str | None] = [None] * len(prompts)
    texts = [(i, p) for i, p in enumerate(prompts) if isinstance(p, str)]
    chats = [(i, p) for i, p in enumerate(prompts) if not isinstance(p, str)]
    if texts:
        for (i, _), result in zip(texts, llm.generate([p for _, p in texts], params), strict=True):
            out[i] = result.outputs[0].text
    if chats:
        conversations: Any = [list(p) for _, p in chats]
        for (i, _), result in zip(chats, llm.chat(conversations, params), strict=True):
            out[i] = result.outputs[0].text
    del llm
    return [o or "" for o in out]
