"""The HF backend of pooling tasks: one forward pass per batch, pooled the way vLLM pools the same folder.

- ``embed``: the base model's last hidden states (``AutoModel``; a causal LM's ``lm_head`` is not used), pooled
  by :func:`~llm_infer_dagster.engines.pooling.embed_pooling_type` (last token / mean / first token over the
  prompt's own tokens) and L2-normalized, as vLLM's ``embed`` does by default.
- ``classify``: ``AutoModelForSequenceClassification`` (which pools the last non-padding token of a decoder,
  as vLLM does), softmax over the logits; ``reward``: the same head's one logit, raw.

Prompts are tokenized by :func:`~llm_infer_dagster.engines.pooling.render_ids` (also vLLM's), padded on the
right in batches of ``batch_size``; a prompt longer than the model accepts is an error Completion.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llm_infer_dagster.engines.base import Completion, Prompt, Sampling, check_max_input_length
from llm_infer_dagster.engines.pooling import embed_pooling_type, label_names, render_ids, too_long_for_pooling
from llm_infer_dagster.engines.spec import Dtype
from llm_infer_dagster.errors import SettingsError

__all__ = ["HFPoolingEngine"]

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")


class HFPoolingEngine:
    """An ``Engine`` whose ``generate`` returns pooled values (``Completion.pooled``), not text."""

    name = "hf"

    def __init__(
        self,
        model_path: str,
        task: str,
        *,
        device: str = "cpu",
        dtype: Dtype = "auto",
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        batch_size: int = 32,
        max_input_length: int | None = None,
    ) -> None:
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        self.model_path = str(model_path)
        self.task = task
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SettingsError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
        if batch_size < 1:
            raise SettingsError(f"batch_size must be at least 1, got {batch_size}")
        check_max_input_length(max_input_length)
        self.batch_size, self.max_input_length = batch_size, max_input_length
        if dtype == "auto":
            torch_dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        else:
            torch_dtype = _DTYPES[dtype]
        kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        try:
            self._tokenizer: Any = AutoTokenizer.from_pretrained(self.model_path, **kwargs)
            config = AutoConfig.from_pretrained(self.model_path, **kwargs)
            loader = AutoModel if task == "embed" else AutoModelForSequenceClassification
            model: Any = loader.from_pretrained(self.model_path, dtype=torch_dtype, **kwargs)
        except (OSError, ValueError) as exc:
            if not Path(self.model_path).exists():
                reason = "no such folder (nothing is downloaded: give a local folder or an already cached hub id)"
            else:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SettingsError(f"cannot load model from {self.model_path}: {reason}") from exc
        self._model: Any = model.to(self.device).eval()
        self._pad_id = self._tokenizer.pad_token_id
        if self._pad_id is None:
            self._pad_id = self._tokenizer.eos_token_id if self._tokenizer.eos_token_id is not None else 0
        if task != "embed" and getattr(self._model.config, "pad_token_id", None) is None:
            self._model.config.pad_token_id = self._pad_id  # the head finds each row's last token by it
        self.pooling = embed_pooling_type(self.model_path, config.to_dict()) if task == "embed" else "last"
        self.labels = label_names(config.to_dict()) if task != "embed" else []
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        derived = next((v for k in _LENGTH_KEYS if isinstance(v := getattr(text_config, k, None), int) and v > 0), None)
        self.max_model_len = int(max_model_len or derived or 2048)

    def generate(
        self, prompts: Sequence[Prompt], sampling: Sampling, *, adapter: str | None = None
    ) -> list[Completion]:
        """One Completion per prompt with its pooled value (sampling parameters do not apply to pooling)."""
        if adapter is not None:
            raise ValueError("LoRA adapters are not supported by pooling tasks")
        results: list[Completion | None] = [None] * len(prompts)
        ready: list[tuple[int, list[int]]] = []
        for i, prompt in enumerate(prompts):
            ids, error = render_ids(self._tokenizer, prompt)
            if ids is not None:
                error = too_long_for_pooling(len(ids), self.max_input_length, self.max_model_len)
            if ids is None or error is not None:
                results[i] = Completion(prompt_tokens=len(ids or []), error=error)
            else:
                ready.append((i, ids))
        ready.sort(key=lambda r: len(r[1]))  # similar lengths share a batch: less padding
        for start in range(0, len(ready), self.batch_size):
            batch = ready[start : start + self.batch_size]
            for (i, ids), value in zip(batch, self._pool([ids for _, ids in batch]), strict=True):
                results[i] = Completion(prompt_tokens=len(ids), pooled=value)
        return [r if r is not None else Completion(error="internal: no output") for r in results]

    @torch.inference_mode()
    def _pool(self, batch: list[list[int]]) -> list[Any]:
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), int(self._pad_id), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        lengths = mask.sum(dim=1)
        if self.task == "embed":
            hidden = self._model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
            if self.pooling == "mean":
                pooled = (hidden * mask.unsqueeze(-1)).sum(dim=1) / lengths.unsqueeze(-1)
            elif self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                pooled = hidden[torch.arange(len(batch), device=hidden.device), lengths - 1]
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            return [v.tolist() for v in pooled.cpu()]
        # Score each row on its own tokens: the head pools the last non-pad token, so padding must not count
        logits = self._model(input_ids=input_ids, attention_mask=mask).logits.float().cpu()
        if self.task == "reward":
            return [float(row[0]) for row in logits]
        probs = torch.softmax(logits, dim=-1)
        return [dict(zip(self.labels, (float(p) for p in row), strict=True)) for row in probs]

    def close(self) -> None:
        self._model = None
        gc.collect()
