"""The engine contract shared by the HF and vLLM backends.

A prompt is either plain text (sent as is) or a list of chat messages
(``[{"role": ..., "content": ...}]``), which the engine renders with the model's own chat template; a
message's content may hold image parts for a vision-language model (``engines/multimodal.py``).
An engine never raises for one bad prompt (e.g. longer than the model accepts): that prompt comes back
as a :class:`Completion` with ``error`` set, so one row cannot sink a shard. An engine loaded with LoRA
adapters runs a call with the one it names (``adapter=``), or the base model without any.

Sampling parameters are one mapping for every prompt of a call, or one mapping per prompt (rows whose
``format_prompt`` set their own): :data:`Sampling`. vLLM gives each request its own ``SamplingParams``; HF
generates each group of prompts that share parameters together (:func:`sampling_groups`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm_infer_dagster.errors import SettingsError

#: ``content`` is a string, or a list of OpenAI-style parts (text, ``image_url``: ``engines/multimodal.py``).
ChatMessages = list[dict[str, Any]]
Prompt = str | ChatMessages
#: One set of sampling parameters for every prompt, or one per prompt (in prompt order).
Sampling = Mapping[str, Any] | Sequence[Mapping[str, Any]]


def per_prompt(sampling: Sampling, count: int) -> list[Mapping[str, Any]]:
    """The parameters of each of ``count`` prompts."""
    if isinstance(sampling, Mapping):
        return [sampling] * count
    if len(sampling) != count:
        raise ValueError(f"{len(sampling)} sets of sampling parameters for {count} prompts")
    return list(sampling)


def sampling_key(params: Mapping[str, Any]) -> str:
    """A stable key of one parameter set: prompts with the same key can share a batch."""
    return json.dumps(dict(params), sort_keys=True, default=str)


def sampling_groups(sampling: Sampling, count: int) -> list[tuple[Mapping[str, Any], list[int]]]:
    """The distinct parameter sets of ``count`` prompts, each with its prompts' indices, in first-seen order."""
    if isinstance(sampling, Mapping):
        return [(sampling, list(range(count)))]
    groups: dict[str, tuple[Mapping[str, Any], list[int]]] = {}
    for i, params in enumerate(per_prompt(sampling, count)):
        groups.setdefault(sampling_key(params), (params, []))[1].append(i)
    return list(groups.values())


def check_max_input_length(max_input_length: int | None) -> None:
    """Refuse an allowance no prompt can meet (the seed's ``--max_input_length``), before the model loads."""
    if max_input_length is not None and (isinstance(max_input_length, bool) or max_input_length < 1):
        raise SettingsError(f"--max_input_length must be at least 1 (prompt tokens), got {max_input_length}")


def too_long_error(n_tokens: int, max_input_length: int | None, max_model_len: int) -> str | None:
    """Why a prompt of ``n_tokens`` is refused (the same words on every engine), or None if it fits."""
    if max_input_length is not None and n_tokens > max_input_length:
        return f"prompt is {n_tokens} tokens, longer than the {max_input_length} allowed (--max_input_length)"
    if n_tokens >= max_model_len:
        return (
            f"prompt is {n_tokens} tokens; the model accepts at most {max_model_len} "
            "(max_model_len), prompt plus at least one new token"
        )
    return None


@dataclass
class Completion:
    """All ``n`` samples for one prompt, in sample order."""

    responses: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)  # "stop" | "length" per sample
    prompt_tokens: int = 0
    completion_tokens: int = 0  # summed over the n samples
    error: str | None = None
    # A pooling task's value instead of text (engines/pooling.py): embed a list of floats, classify a
    # {label: probability} dict in label order, reward one float
    pooled: Any = None

    @property
    def response(self) -> str | None:
        """The first sample, the seed's ``model_response``."""
        return self.responses[0] if self.responses else None


class Engine(Protocol):
    """A loaded model. Load once per worker process; call :meth:`generate` for many shards."""

    name: str  # "hf" | "vllm"
    model_path: str

    def generate(
        self, prompts: Sequence[Prompt], sampling: Sampling, *, adapter: str | None = None
    ) -> list[Completion]:
        """Return one Completion per prompt, in input order (with LoRA adapter ``adapter``, if named)."""
        ...

    def close(self) -> None:
        """Release the model (best effort; the owning process exiting is what frees GPU memory)."""
        ...


class StreamingEngine(Engine, Protocol):
    """An engine that keeps its batch fed across shards (vLLM's add-request/step loop).

    ``submit`` queues a whole shard under a tag and returns at once; ``step`` advances generation and
    returns the shards whose last request finished, so the next shard's requests are already running
    while the current one drains.
    """

    def submit(
        self, tag: str, prompts: Sequence[Prompt], sampling: Sampling, *, adapter: str | None = None
    ) -> None: ...

    def has_pending(self) -> bool: ...

    def step(self) -> list[tuple[str, list[Completion]]]: ...

    def wants_more(self) -> bool:
        """True while the engine would run a fuller batch if given another shard now."""
        ...


class BlockingStream:
    """Gives a generate-only engine (HF) the streaming interface: each step runs the oldest queued shard.

    An engine whose ``joins_shards(prompts, sampling)`` says a shard's outputs do not depend on what else is
    in its batch (HF's continuous loop: per-row state, a seeded request's own generator) also gets the shards
    queued behind it, with the same adapter, in the same ``generate``: small shards then share a batch
    instead of running one by one (one-row shards: one forward each). It asks for more shards while what is
    queued would not fill one batch (``width``).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # (tag, prompts, sampling, adapter, whether it may share a generate), in submit order
        self._queue: list[tuple[str, Sequence[Prompt], Sampling, str | None, bool]] = []
        joins = getattr(engine, "joins_shards", None)
        self._joins: Callable[[Sequence[Prompt], Sampling], bool] | None = joins if callable(joins) else None

    def submit(self, tag: str, prompts: Sequence[Prompt], sampling: Sampling, *, adapter: str | None = None) -> None:
        joinable = self._joins is not None and self._joins(prompts, sampling)  # decided once, not every step
        self._queue.append((tag, prompts, sampling, adapter, joinable))

    def has_pending(self) -> bool:
        return bool(self._queue)

    def wants_more(self) -> bool:
        if self._joins is None:
            return False  # each step runs one whole shard; the worker's prefetch keeps the next one ready
        return sum(len(q[1]) for q in self._queue) < int(getattr(self.engine, "width", 0))

    def upcoming(self) -> list[str]:
        """The tags of the shards the next ``step`` runs (a failure there is theirs)."""
        return [q[0] for q in self._batch()]

    def _batch(self) -> list[tuple[str, Sequence[Prompt], Sampling, str | None, bool]]:
        if not self._queue:
            return []
        first = self._queue[0]
        batch = [first]
        if first[4]:
            for item in self._queue[1:]:
                if item[3] != first[3] or not item[4]:
                    break
                batch.append(item)
        return batch

    def step(self) -> list[tuple[str, list[Completion]]]:
        batch = self._batch()
        if not batch:
            return []
        del self._queue[: len(batch)]
        adapter = batch[0][3]
        prompts = [p for _, ps, _, _, _ in batch for p in ps]
        same = all(b[2] is batch[0][2] or b[2] == batch[0][2] for b in batch) and isinstance(batch[0][2], Mapping)
        sampling = batch[0][2] if same else [s for _, ps, sp, _, _ in batch for s in per_prompt(sp, len(ps))]
        if adapter is None:  # an engine without adapters need not know the keyword
            out = self.engine.generate(prompts, sampling)
        else:
            out = self.engine.generate(prompts, sampling, adapter=adapter)
        results, start = [], 0
        for tag, ps, _, _, _ in batch:
            results.append((tag, out[start : start + len(ps)]))
            start += len(ps)
        return results


def as_streaming(engine: Engine) -> StreamingEngine:
    """The engine itself if it streams, else a :class:`BlockingStream` around it."""
    if all(callable(getattr(engine, m, None)) for m in ("submit", "has_pending", "step", "wants_more")):
        return engine  # type: ignore[return-value]
    return BlockingStream(engine)  # type: ignore[return-value]
