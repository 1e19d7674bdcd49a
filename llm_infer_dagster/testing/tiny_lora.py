"""Build a tiny real LoRA adapter for a local base model with ``peft``, with no model hub.

Tests, benchmarks and examples need adapters that load through the same code paths as real ones
(``peft.PeftModel.load_adapter`` on HF, vLLM's ``LoRARequest``). The adapter's weights are random and
non-zero (``init_lora_weights=False``; a freshly initialised LoRA has B = 0 and changes nothing), scaled
so that greedy decoding of the tiny model really changes: two adapters of different seeds give different
text from each other and from the base.

CLI: ``python -m llm_infer_dagster.testing.tiny_lora BASE_PATH OUT_PATH [--seed N] [--rank N]`` prints OUT_PATH.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DEFAULT_TARGET_MODULES", "build_tiny_adapter", "main"]

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def build_tiny_adapter(
    base_path: str | Path,
    path: str | Path,
    *,
    seed: int = 1,
    rank: int = 8,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    scale: float = 4.0,
) -> Path:
    """Save a random LoRA adapter of ``base_path`` at ``path`` (``adapter_config.json`` + safetensors).

    Deterministic for the same arguments; written in a temporary sibling folder and renamed into place.
    ``scale`` multiplies the random B matrices, so the adapter's change to the logits beats the tiny
    model's own (large) logit gaps.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32, local_files_only=True)
        config = LoraConfig(
            r=rank,
            lora_alpha=rank,
            target_modules=list(target_modules),
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
            init_lora_weights=False,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_peft_model(base, config)
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "lora_B" in name:
                        param.mul_(scale)
        model.save_pretrained(str(tmp))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_path")
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args(argv)
    print(build_tiny_adapter(args.base_path, args.path, seed=args.seed, rank=args.rank))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
