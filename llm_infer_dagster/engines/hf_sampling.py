"""vLLM-style sampling parameters on the HF backend: which it honours, and the mapping to ``generate``.

The task layer (``tasks/sampling.py``) checks keys, types and ranges when a task loads; what the HF
engine can and cannot do with them is the engine's business and lives here. The names and meanings stay
vLLM's, so a task samples the same way on either backend; the HF backend refuses keys it cannot honour
instead of quietly ignoring them.

Pure logic: no torch, no transformers, no Dagster, nothing from ``tasks/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm_infer_dagster.errors import TaskConfigError

__all__ = ["HF_SUPPORTED_KEYS", "check_hf_supported", "normalize_stop", "to_hf_generate_kwargs"]

#: Keys the HF backend implements. The others are accepted only at their neutral value (see below).
HF_SUPPORTED_KEYS: frozenset[str] = frozenset(
    {
        "n",
        "repetition_penalty",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "stop_token_ids",
        "ignore_eos",
        "max_tokens",
        "min_tokens",
        "skip_special_tokens",
        "include_stop_str_in_output",
        "structured_outputs",  # hf_structured.py
    }
)

# Values at which an HF-unsupported key changes nothing, so a shared defaults file may spell them out.
_HF_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logprobs": (None,),
    "prompt_logprobs": (None,),
    "bad_words": ([],),
    "spaces_between_special_tokens": (True,),
}

# vLLM's SamplingParams defaults, for keys the mapping to HF needs when a task leaves them out.
_VLLM_DEFAULTS: dict[str, Any] = {
    "n": 1,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "max_tokens": 16,
    "min_tokens": 0,
}


def normalize_stop(params: Mapping[str, Any]) -> list[str]:
    """``stop`` as a list: vLLM accepts a string, a list or null; empty strings would stop at once."""
    stop = params.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    return [s for s in stop if s]


def check_hf_supported(params: Mapping[str, Any]) -> None:
    """Refuse keys the HF backend cannot honour, rather than silently sampling differently from vLLM.

    Unsupported keys pass when set to their neutral value (``presence_penalty: 0``, ``logprobs: null``).
    """
    bad = [
        key
        for key, value in params.items()
        if key not in HF_SUPPORTED_KEYS and not (key in _HF_NEUTRAL and value in _HF_NEUTRAL[key])
    ]
    if bad:
        names = ", ".join(f'"{k}"' for k in bad)
        raise TaskConfigError(
            f"sampling parameters {names} are not supported by the HF backend; "
            f"use --model_type vllm or drop {'it' if len(bad) == 1 else 'them'} from sampling_params.json "
            f"(HF supports: {', '.join(sorted(HF_SUPPORTED_KEYS))})"
        )


def to_hf_generate_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """Translate vLLM-style parameters to ``model.generate`` keyword arguments.

    Missing keys take vLLM's ``SamplingParams`` defaults (top_p 1, top_k off, max_tokens 16), not the
    model's ``generation_config``, so both backends sample the same way for the same file.

    - temperature 0 -> greedy (``do_sample=False``, no temperature/top_p/top_k/min_p). HF refuses
      ``num_return_sequences > 1`` without sampling, while vLLM returns ``n`` identical samples, so
      greedy leaves ``num_return_sequences`` out and the engine repeats the one sample ``n`` times.
    - top_k -1 or 0 (vLLM: off) -> HF ``top_k=0`` (HF's own unset default would be 50).
    - max_tokens -> max_new_tokens, min_tokens -> min_new_tokens, n -> num_return_sequences.

    Handled by the engine, not here: ``stop`` (``stop_strings`` plus cutting the text), ``stop_token_ids``
    and ``ignore_eos`` (the ``eos_token_id`` list), ``seed`` (``torch.manual_seed``),
    ``skip_special_tokens`` and ``include_stop_str_in_output`` (decoding).
    """
    p = {**_VLLM_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    kwargs: dict[str, Any] = {
        "max_new_tokens": int(p["max_tokens"]),
        "repetition_penalty": float(p["repetition_penalty"]),
    }
    if p["min_tokens"]:
        kwargs["min_new_tokens"] = int(p["min_tokens"])
    if float(p["temperature"]) == 0.0:
        kwargs["do_sample"] = False
        return kwargs
    kwargs.update(
        do_sample=True,
        temperature=float(p["temperature"]),
        top_p=float(p["top_p"]),
        top_k=max(int(p["top_k"]), 0),
        num_return_sequences=int(p["n"]),
    )
    if p["min_p"]:
        kwargs["min_p"] = float(p["min_p"])
    return kwargs
