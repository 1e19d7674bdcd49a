"""The vLLM backend of pooling tasks: ``vllm.LLM(runner="pooling")`` and its ``embed`` / ``classify`` calls.

- ``embed``: ``convert="embed"`` (a causal LM's hidden states; vLLM pools by the folder's sentence-transformers
  config, else last token for a decoder) with vLLM's default activation (L2 normalization).
- ``classify``: the model's ``*ForSequenceClassification`` head, softmax probabilities (vLLM's default
  activation); ``reward``: the same call with ``use_activation=False``, the 1-label head's raw score.

Prompts are tokenized here by :func:`~llm_infer_dagster.engines.pooling.render_ids`, exactly as the HF pooling
engine does, and handed over as token ids, so both engines pool the same tokens. One blocking call per shard
(a pooling request is one forward pass: nothing to keep fed across shards, unlike generation). CPU defaults
(float32, eager, a small KV cache) as in :mod:`llm_infer_dagster.engines.vllm`.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from typing import Any

from llm_infer_dagster.engines.base import Completion, Prompt, Sampling, check_max_input_length
from llm_infer_dagster.engines.pooling import label_names, read_config, render_ids, too_long_for_pooling
from llm_infer_dagster.engines.spec import Dtype
from llm_infer_dagster.engines.vllm import cpu_engine_args, start_llm

__all__ = ["VLLMPoolingEngine"]

log = logging.getLogger(__name__)


class VLLMPoolingEngine:
    """An ``Engine`` whose ``generate`` returns pooled values (``Completion.pooled``), not text."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        task: str,
        *,
        device: str = "cuda",
        dtype: Dtype = "auto",
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        engine_args: dict[str, Any] | None = None,
        max_input_length: int | None = None,
    ) -> None:
        self.model_path = str(model_path)
        self.task = task
        check_max_input_length(max_input_length)
        self.max_input_length = max_input_length
        args: dict[str, Any] = dict(engine_args or {})
        if str(device).split(":")[0] == "cpu":
            if dtype == "auto":
                dtype = "float32"  # "auto" turns an fp32 checkpoint into bf16 on CPU; keep what HF loads
            args = cpu_engine_args(args)
        if task == "embed":
            args.setdefault("convert", "embed")
        args.setdefault("runner", "pooling")
        self.labels = label_names(read_config(self.model_path) or {}) if task != "embed" else []

        self._llm: Any = start_llm(
            self.model_path,
            label=f"vLLM ({task})",
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            max_model_len=max_model_len,
            trust_remote_code=trust_remote_code,
            **args,
        )
        self.max_model_len = int(self._llm.llm_engine.model_config.max_model_len)
        self._tokenizer: Any = self._llm.get_tokenizer()

    def generate(
        self, prompts: Sequence[Prompt], sampling: Sampling, *, adapter: str | None = None
    ) -> list[Completion]:
        """One Completion per prompt with its pooled value (sampling parameters do not apply to pooling)."""
        if adapter is not None:
            raise ValueError("LoRA adapters are not supported by pooling tasks")
        if self._llm is None:
            raise RuntimeError("VLLMPoolingEngine.generate called after close()")
        results: list[Completion | None] = [None] * len(prompts)
        rows: list[int] = []
        inputs: list[dict[str, Any]] = []
        for i, prompt in enumerate(prompts):
            ids, error = render_ids(self._tokenizer, prompt)
            if ids is not None:
                error = too_long_for_pooling(len(ids), self.max_input_length, self.max_model_len)
            if ids is None or error is not None:
                results[i] = Completion(prompt_tokens=len(ids or []), error=error)
                continue
            rows.append(i)
            inputs.append({"prompt_token_ids": ids})
        if inputs:
            for i, output in zip(rows, self._run(inputs), strict=True):
                results[i] = Completion(prompt_tokens=len(output.prompt_token_ids), pooled=self._value(output))
        return [r if r is not None else Completion(error="internal: no output") for r in results]

    def _run(self, inputs: list[dict[str, Any]]) -> list[Any]:
        if self.task == "embed":
            return list(self._llm.embed(inputs, use_tqdm=False))
        from vllm import PoolingParams

        params = PoolingParams(use_activation=False) if self.task == "reward" else None
        return list(self._llm.classify(inputs, pooling_params=params, use_tqdm=False))

    def _value(self, output: Any) -> Any:
        if self.task == "embed":
            return [float(x) for x in output.outputs.embedding]
        probs = [float(x) for x in output.outputs.probs]
        if self.task == "reward":
            return probs[0]
        labels = self.labels if len(self.labels) == len(probs) else [f"LABEL_{i}" for i in range(len(probs))]
        return dict(zip(labels, probs, strict=True))

    def close(self) -> None:
        """Shut the engine core down (best effort; the owning process exiting is what frees the memory)."""
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:
            log.debug("vLLM engine core shutdown failed", exc_info=True)
        self._llm = None
        gc.collect()
