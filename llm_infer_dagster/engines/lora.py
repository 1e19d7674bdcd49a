"""LoRA adapters on both engines: one base model loaded once, each call running one adapter (or none).

A task declares adapters in ``task_settings.json`` (``tasks/task_settings.py`` checks each folder is a
PEFT LoRA adapter); the engine spec carries them by name -> folder, and a job names the one it runs.

- vLLM: the engine starts with ``enable_lora=True``, ``max_lora_rank`` the smallest rank vLLM accepts that
  holds every adapter's ``r``, and ``max_loras`` = the number of adapters (all can share a batch); each
  request carries the adapter's ``LoRARequest`` (ids 1..N in name order).
- HF: the model is wrapped in a ``peft.PeftModel`` with every adapter loaded; a call sets its adapter, and a
  call with none runs with the adapters disabled (the base model's own output).

On vLLM's CPU build, requests without an adapter must not share an engine with adapter requests: its CPU LoRA
ops index the adapter slots with the request's slot id, and "no adapter" is id -1, so a base request batched
with adapter requests gets the last loaded adapter (found by ``tests/engines/test_lora_engines.py``; the GPU kernels
skip -1). There the base model runs in an engine of its own (:func:`base_shares_engine_with_adapters`).

Importing this module imports neither torch, peft nor vLLM.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from llm_infer_dagster.engines.spec import EngineSpec
from llm_infer_dagster.errors import SettingsError

__all__ = [
    "VLLM_LORA_RANKS",
    "adapter_rank",
    "base_shares_engine_with_adapters",
    "hf_with_adapters",
    "use_adapter",
    "vllm_lora_args",
    "vllm_requests",
]

#: The ranks vLLM's ``max_lora_rank`` takes (``vllm.config.lora.MaxLoRARanks``).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def base_shares_engine_with_adapters(spec: EngineSpec) -> bool:
    """Whether requests without an adapter may run in one engine with adapter requests (all but vLLM on CPU)."""
    return not (spec.model_type == "vllm" and spec.device.split(":")[0] == "cpu")


def adapter_rank(folder: str) -> int:
    """The LoRA rank ``r`` in an adapter folder's ``adapter_config.json``."""
    try:
        rank = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))["r"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SettingsError(f"LoRA adapter {folder}: cannot read its rank from adapter_config.json ({exc})") from None
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise SettingsError(f"LoRA adapter {folder}: adapter_config.json has rank r={rank!r}, not a positive integer")
    return rank


def vllm_lora_args(adapters: Mapping[str, str], engine_args: Mapping[str, Any]) -> dict[str, Any]:
    """The ``LLM(...)`` arguments that let the engine serve ``adapters``; the run's own ``engine_args`` win."""
    if not adapters:
        return {}
    need = max(adapter_rank(path) for path in adapters.values())
    fits = [r for r in VLLM_LORA_RANKS if r >= need]
    if not fits:
        raise SettingsError(
            f"LoRA rank {need} is above the {VLLM_LORA_RANKS[-1]} vLLM supports (max_lora_rank); "
            "use an adapter of a lower rank, or the HF engine"
        )
    args: dict[str, Any] = {"enable_lora": True, "max_lora_rank": fits[0], "max_loras": len(adapters)}
    return {k: v for k, v in args.items() if k not in engine_args}


def vllm_requests(adapters: Mapping[str, str]) -> dict[str, Any]:
    """name -> ``vllm.lora.request.LoRARequest``, with ids 1..N in name order."""
    from vllm.lora.request import LoRARequest

    return {
        name: LoRARequest(lora_name=name, lora_int_id=i, lora_path=adapters[name])
        for i, name in enumerate(sorted(adapters), start=1)
    }


def hf_with_adapters(model: Any, adapters: Mapping[str, str], device: str) -> Any:
    """``model`` wrapped in a ``PeftModel`` holding every adapter (the model itself when there are none)."""
    if not adapters:
        return model
    from peft import PeftModel

    names = sorted(adapters)
    try:
        wrapped = PeftModel.from_pretrained(
            model, adapters[names[0]], adapter_name=names[0], is_trainable=False, torch_device=device
        )
        for name in names[1:]:
            wrapped.load_adapter(adapters[name], adapter_name=name, is_trainable=False, torch_device=device)
    except Exception as exc:  # a folder that passed the file checks and still does not fit this base
        text = str(exc).strip()
        raise SettingsError(
            f"cannot load LoRA adapter(s) {', '.join(adapters[n] for n in names)} on this model: "
            f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
        ) from exc
    return wrapped.eval()


@contextlib.contextmanager
def use_adapter(model: Any, adapters: Mapping[str, str], adapter: str | None) -> Iterator[None]:
    """Run what the block generates with ``adapter`` (the base model when None) on an HF model."""
    if adapter is not None and adapter not in adapters:
        known = ", ".join(sorted(adapters)) or "none"
        raise ValueError(f"LoRA adapter {adapter!r} is not loaded in this engine (loaded: {known})")
    if not adapters:
        yield
    elif adapter is None:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(adapter)
        yield
