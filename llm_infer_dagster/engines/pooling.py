"""Pooling tasks (``embed``, ``classify``, ``reward``): what both engines share, as pure logic.

A pooling task runs one forward pass per prompt and keeps a pooled value instead of generated text:

- ``embed``: one vector per prompt, the hidden states pooled as vLLM pools them for the same folder (a
  sentence-transformers folder's ``1_Pooling/config.json`` says mean / cls / last token; otherwise a decoder
  pools its last token and an encoder its first), then L2-normalized (vLLM's default activation for ``embed``).
- ``classify``: the label probabilities (softmax over a ``*ForSequenceClassification`` head's logits), with the
  label names from the config's ``id2label``.
- ``reward``: the one raw score of a 1-label score head (no activation).

:func:`check_pooling_model` reads the model folder's ``config.json`` alone (no torch), so a task asking for a
head the model does not have is one line before any model loads. Importing this module imports no torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from llm_infer_dagster.engines.base import Engine
from llm_infer_dagster.engines.spec import EngineSpec
from llm_infer_dagster.errors import SettingsError

TaskKind = Literal["generate", "embed", "classify", "reward"]
TASK_KINDS: tuple[TaskKind, ...] = get_args(TaskKind)
POOLING_KINDS: tuple[TaskKind, ...] = ("embed", "classify", "reward")
PoolingType = Literal["last", "mean", "cls"]

#: model_type values of encoder models, which vLLM pools by their first (CLS) token by default
ENCODER_MODEL_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra", "modernbert", "nomic_bert"}
)


def is_pooling(kind: str) -> bool:
    return kind in POOLING_KINDS


def read_config(model_path: str) -> dict[str, Any] | None:
    """The folder's ``config.json`` as a dict, or None where there is none to read (a hub name, no folder)."""
    path = Path(model_path) / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def label_names(config: Mapping[str, Any]) -> list[str]:
    """The head's label names in index order (``id2label``), or ``LABEL_<i>`` for ``num_labels`` without names."""
    id2label = config.get("id2label")
    if isinstance(id2label, Mapping) and id2label:
        return [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]
    n = config.get("num_labels")
    return [f"LABEL_{i}" for i in range(n)] if isinstance(n, int) and n > 0 else []


def has_score_head(config: Mapping[str, Any]) -> bool:
    """Whether the config names a sequence classification / score head (what classify and reward pool with)."""
    archs = config.get("architectures") or []
    return any(str(a).endswith(("ForSequenceClassification", "ForRewardModel", "RewardModel")) for a in archs)


def check_pooling_model(kind: str, model_path: str | None, *, where: str = "task_settings.json") -> None:
    """Refuse a pooling task its model cannot run, from ``config.json`` alone; one line naming ``where``'s key.

    ``where`` is the file (and key) that set the task kind. A model path without a readable ``config.json``
    (a hub name) is left to the engine.
    """
    if not is_pooling(kind) or not model_path:
        return
    config = read_config(model_path)
    if config is None:
        return
    archs = ", ".join(str(a) for a in config.get("architectures") or []) or "none named"
    if kind == "embed":
        return  # any causal LM or encoder: its hidden states are pooled (vLLM's convert="embed")
    if not has_score_head(config):
        head = "classification" if kind == "classify" else "score (reward)"
        raise SettingsError(
            f'{where}: "task" is "{kind}", but the model at {model_path} has no {head} head (architectures: '
            f'{archs}); use a *ForSequenceClassification model, or "task": "embed" / "generate" for this one'
        )
    labels = label_names(config)
    if kind == "classify" and len(labels) < 2:
        raise SettingsError(
            f'{where}: "task" is "classify", but the model at {model_path} has a 1-label head (a score head); '
            'use "task": "reward" for its score, or a classifier with id2label of 2 or more labels'
        )
    if kind == "reward" and len(labels) != 1:
        raise SettingsError(
            f'{where}: "task" is "reward", but the model at {model_path} has {len(labels)} labels '
            f'({", ".join(labels[:5])}); a reward model has one score: use "task": "classify" for this one'
        )


def embed_pooling_type(model_path: str, config: Mapping[str, Any] | None = None) -> PoolingType:
    """How ``embed`` pools this folder, as vLLM does: its sentence-transformers Pooling module, else by kind."""
    folder = Path(model_path)
    modules = folder / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
            pooling = next(e for e in entries if str(e.get("type", "")).endswith("Pooling"))
            cfg = json.loads((folder / str(pooling.get("path", "1_Pooling")) / "config.json").read_text())
        except (OSError, ValueError, StopIteration, AttributeError, TypeError):
            cfg = {}
        if cfg.get("pooling_mode_mean_tokens"):
            return "mean"
        if cfg.get("pooling_mode_cls_token"):
            return "cls"
        if cfg.get("pooling_mode_lasttoken"):
            return "last"
    config = config if config is not None else (read_config(model_path) or {})
    return "cls" if str(config.get("model_type", "")) in ENCODER_MODEL_TYPES else "last"


def too_long_for_pooling(n_tokens: int, max_input_length: int | None, max_model_len: int) -> str | None:
    """Why a prompt of ``n_tokens`` is refused by a pooling task (no new token: the whole context is the prompt)."""
    if max_input_length is not None and n_tokens > max_input_length:
        return f"prompt is {n_tokens} tokens, longer than the {max_input_length} allowed (--max_input_length)"
    if n_tokens > max_model_len:
        return f"prompt is {n_tokens} tokens; the model accepts at most {max_model_len} (max_model_len)"
    return None


def classify_value(labels: list[str], probs: list[float]) -> dict[str, float]:
    """What ``extract_answer`` gets for a classify row: label name -> probability, in label order."""
    return dict(zip(labels, probs, strict=True))


def render_ids(tokenizer: Any, prompt: Any) -> tuple[list[int] | None, str | None]:
    """(token ids, None) or (None, why) of one prompt, the same on both engines.

    Plain text is tokenized with the tokenizer's special tokens; chat messages are rendered with the chat
    template (no generation prompt: nothing is generated) and tokenized without them, as the template writes
    its own.
    """
    if isinstance(prompt, str):
        text, add_special = prompt, True
    elif isinstance(prompt, list) and all(isinstance(m, Mapping) for m in prompt):
        if getattr(tokenizer, "chat_template", None) is None:
            return None, "format_prompt returned chat messages, but the model has no chat template"
        try:
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=False, tokenize=False)
        except Exception as exc:
            return None, f"cannot apply the chat template: {type(exc).__name__}: {exc}"
        add_special = False
    else:
        return None, f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}"
    try:
        ids = list(tokenizer(text, add_special_tokens=add_special)["input_ids"])
    except Exception as exc:
        return None, f"cannot tokenize the prompt: {type(exc).__name__}: {exc}"
    if not ids:
        return None, "prompt is empty (0 tokens)"
    return ids, None


def load_pooling_engine(spec: EngineSpec) -> Engine:
    """The pooling engine of an ``EngineSpec`` whose ``task`` is a pooling kind (torch / vLLM imported here)."""
    if spec.task not in POOLING_KINDS:
        raise SettingsError(f"task must be one of {', '.join(TASK_KINDS)}, got {spec.task!r}")
    if spec.lora_adapters:
        raise SettingsError(f"LoRA adapters are not supported with the {spec.task!r} task; drop lora_adapters")
    if spec.model_type == "hf":
        from llm_infer_dagster.engines.hf_pooling import HFPoolingEngine

        return HFPoolingEngine(
            spec.model_path, spec.task, device=spec.device, dtype=spec.dtype, max_model_len=spec.max_model_len,
            trust_remote_code=spec.trust_remote_code, batch_size=spec.batch_size,
            max_input_length=spec.max_input_length,
        )  # fmt: skip
    if spec.model_type == "vllm":
        from llm_infer_dagster.engines.vllm_pooling import VLLMPoolingEngine

        return VLLMPoolingEngine(
            spec.model_path, spec.task, device=spec.device, dtype=spec.dtype, max_model_len=spec.max_model_len,
            trust_remote_code=spec.trust_remote_code, tensor_parallel_size=spec.tensor_parallel_size,
            engine_args=dict(spec.engine_args), max_input_length=spec.max_input_length,
        )  # fmt: skip
    raise ValueError(f"unknown model type {spec.model_type!r}")
