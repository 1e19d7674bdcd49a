"""What engine to build, as plain data that crosses a process boundary, and the one place engines are built."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from llm_infer_dagster.engines.base import Engine

ModelType = Literal["hf", "vllm"]
#: The dtypes both engines take ("auto" loads float32 on CPU).
Dtype = Literal["auto", "float32", "float16", "bfloat16"]


@dataclass(frozen=True)
class EngineSpec:
    model_type: ModelType
    model_path: str
    device: str = "cpu"  # "cpu" | "cuda"
    dtype: Dtype = "auto"
    max_model_len: int | None = None
    trust_remote_code: bool = False
    batch_size: int = 32
    tensor_parallel_size: int = 1
    engine_args: dict[str, Any] = field(default_factory=dict)
    max_input_length: int | None = None  # the seed's --max_input_length: longer prompts are error rows
    # LoRA adapters loaded with the base model, by name -> folder; a job names the one it runs (or none)
    lora_adapters: dict[str, str] = field(default_factory=dict)
    # vLLM: feed queued requests sorted by token ids so shared prefixes hit the prefix cache (task_settings'
    # prefix_planning, opt in)
    prefix_order: bool = False
    # the first shards try a few batch widths and the worker keeps the fastest (task_settings' calibrate, opt in)
    calibrate: bool = False
    # what the model does per prompt: "generate" text, or a pooling task ("embed", "classify", "reward")
    task: str = "generate"

    def base(self) -> EngineSpec:
        """This engine without its adapters: specs with the same base can share one loaded engine."""
        return replace(self, lora_adapters={})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineSpec:
        return cls(**data)


def has_chat_template(model_path: str) -> bool | None:
    """Whether a local model folder ships a chat template (None: cannot tell), read from its files alone.

    Lets a chat-message task fail before a model is loaded, instead of once per shard after.
    """
    folder = Path(model_path)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return None


def load_engine(spec: EngineSpec) -> Engine:
    """Build the engine. Imports torch/vLLM lazily: call it only in the process that owns the GPUs."""
    if spec.task != "generate":
        from llm_infer_dagster.engines.pooling import load_pooling_engine

        return load_pooling_engine(spec)
    if spec.model_type == "hf":
        from llm_infer_dagster.engines.hf import HFEngine

        return HFEngine(
            spec.model_path,
            device=spec.device,
            dtype=spec.dtype,
            max_model_len=spec.max_model_len,
            trust_remote_code=spec.trust_remote_code,
            batch_size=spec.batch_size,
            max_input_length=spec.max_input_length,
            lora_adapters=dict(spec.lora_adapters),
        )
    if spec.model_type == "vllm":
        from llm_infer_dagster.engines.vllm import VLLMEngine

        return VLLMEngine(
            spec.model_path,
            device=spec.device,
            dtype=spec.dtype,
            max_model_len=spec.max_model_len,
            trust_remote_code=spec.trust_remote_code,
            tensor_parallel_size=spec.tensor_parallel_size,
            engine_args=dict(spec.engine_args),
            max_input_length=spec.max_input_length,
            lora_adapters=dict(spec.lora_adapters),
            prefix_order=spec.prefix_order,
        )
    raise ValueError(f"unknown model type {spec.model_type!r}")
