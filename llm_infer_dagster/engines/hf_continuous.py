"""Continuous batching for the HF engine: a decode loop that keeps its batch full.

``model.generate`` on a static batch runs until its longest row is done: finished rows keep decoding
padding, and the next batch waits. Here the engine drives the model itself, one token per step, with one
left-padded KV cache (a plain ``DynamicCache``) for every running sequence:

- a sequence that finishes (a terminating token, its ``max_new`` tokens, a stop string) leaves the batch at
  once: its cache row is dropped, and cache columns that only padding still uses are cut off the left;
- when enough slots are free, queued prompts are prefilled together in one left-padded forward, and their
  cache rows join the running cache, left-padded to the common width (a prompt with ``samples`` sequences
  is prefilled once and its cache row repeated);
- every row's real tokens are right-aligned, so one new column per step serves all rows; position ids
  come from each row's own length, as ``generate`` derives them from the attention mask.

Each step does what ``generate``'s greedy and sampling loop does (fp32 logits of the last position, the
logits processors, then argmax or ``torch.multinomial``), so greedy outputs equal a bare ``generate`` up
to floating-point effects of padding, the same as in a static batch. Differences from a static batch:

- ``max_new``, terminators, ``min_tokens`` and stop strings are per request, and requests with different
  sampling parameters share the batch (each step applies each parameter set's processors to its rows).
- A seeded request samples from its own ``torch.Generator`` (shared by its ``samples`` sequences), so its
  samples do not depend on what else is in the batch, as with vLLM's per-request seed.
- The repetition penalty sees the prompt and the generated tokens only; a static batch also penalises the
  padding id of its shorter prompts.

Models whose cache is not plain attention (recurrent, linear attention) or whose ``forward`` takes no
``position_ids`` are not supported (:func:`unsupported_reason`); the engine then uses static batches.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer

__all__ = ["ContinuousDecoder", "Request", "Sampler", "unsupported_reason"]

_ATTENTION_LAYERS = {"full_attention", "sliding_attention"}


def _base_model(model: Any) -> Any:
    """The transformers model under a ``peft.PeftModel`` (the model itself otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def unsupported_reason(model: Any) -> str | None:
    """Why the continuous loop cannot drive ``model`` (None if it can)."""
    base = _base_model(model)
    config = base.config
    if getattr(config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    supports_cache = getattr(base, "_supports_default_dynamic_cache", None)
    if callable(supports_cache) and not supports_cache():
        return f"{type(base).__name__} does not use a DynamicCache"
    accepted = inspect.signature(base.forward).parameters
    missing = [p for p in ("attention_mask", "position_ids", "past_key_values") if p not in accepted]
    if missing:
        return f"{type(base).__name__}.forward takes no {', '.join(missing)}"
    text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = set(getattr(text_config, "layer_types", None) or ())
    if layer_types - _ATTENTION_LAYERS:
        return f"layers of type {', '.join(sorted(layer_types - _ATTENTION_LAYERS))}"
    return None


class Sampler:
    """One set of logits parameters: ``generate``'s processors in ``generate``'s order, then the choice.

    ``kwargs`` are :func:`~llm_infer_dagster.engines.hf_sampling.to_hf_generate_kwargs`' output.
    """

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.do_sample = bool(kwargs.get("do_sample", False))
        processors = LogitsProcessorList()
        penalty = float(kwargs.get("repetition_penalty", 1.0))
        if penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(penalty=penalty))
        self.needs_ids = bool(processors)  # the penalty reads each sequence's tokens
        if self.do_sample:
            temperature = kwargs.get("temperature")
            if temperature is not None and temperature != 1.0:
                processors.append(TemperatureLogitsWarper(float(temperature)))
            top_k = kwargs.get("top_k")
            if top_k:
                processors.append(TopKLogitsWarper(top_k=int(top_k)))
            top_p = kwargs.get("top_p")
            if top_p is not None and top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p=float(top_p)))
            min_p = kwargs.get("min_p")
            if min_p:
                processors.append(MinPLogitsWarper(min_p=float(min_p)))
        self.processors = processors


@dataclass
class Request:
    """One prompt to run; ``samples`` sequences of at most ``max_new`` new tokens each."""

    ids: list[int]
    max_new: int
    sampler: Sampler
    samples: int = 1
    terminators: frozenset[int] = frozenset()  # ends a sequence (the token counts)
    min_tokens: int = 0  # terminators are masked before this many new tokens
    generator: torch.Generator | None = None  # a seeded request's own RNG
    stopped: Callable[[list[int]], bool] | None = None  # the new tokens so far complete a stop string


@dataclass
class _Seq:
    request: int
    sample: int
    tokens: list[int] = field(default_factory=list)  # generated; the last one is not in the cache yet
    length: int = 0  # real (non-padding) columns of this row in the cache


class ContinuousDecoder:
    """Runs requests through ``model`` with at most ``capacity`` sequences in the batch.

    Prompts are admitted longest first (similar lengths prefill together, and a batch that runs out of
    memory does so early), whenever at least ``refill_at`` slots are free or nothing is running.
    """

    def __init__(self, model: Any, device: torch.device, capacity: int, refill_at: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._model = model
        self._device = device
        self.capacity = capacity
        self.refill_at = max(1, refill_at if refill_at is not None else capacity // 8)
        accepted = inspect.signature(_base_model(model).forward).parameters
        self._keep_last: dict[str, int] = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}

    def run(self, requests: Sequence[Request], order: Sequence[int] | None = None) -> list[list[list[int]]]:
        """Per request, per sample, the generated token ids (ending with the token that ended it, if any).

        ``order``: the order requests are admitted in (default: longest prompt first).
        """
        out: list[list[list[int]]] = [[[] for _ in range(r.samples)] for r in requests]
        if order is None:
            order = sorted(range(len(requests)), key=lambda i: len(requests[i].ids), reverse=True)
        queue = deque(order)
        running: list[_Seq] = []
        cache: DynamicCache | None = None
        with torch.inference_mode():
            while queue or running:
                free = self.capacity - len(running)
                if queue and (not running or free >= self.refill_at):
                    admitted: list[int] = []
                    while queue and (
                        len(running) + sum(requests[i].samples for i in admitted) + requests[queue[0]].samples
                        <= self.capacity
                        or not (running or admitted)  # a request with more samples than slots runs alone
                    ):
                        admitted.append(queue.popleft())
                    if admitted:
                        cache = self._admit(requests, admitted, running, cache, out)
                if running:
                    assert cache is not None
                    cache = self._step(requests, running, cache, out)
        return out

    # ------------------------------------------------------------------------------------------ steps

    def _admit(
        self,
        requests: Sequence[Request],
        admitted: list[int],
        running: list[_Seq],
        cache: DynamicCache | None,
        out: list[list[list[int]]],
    ) -> DynamicCache | None:
        """Prefill ``admitted`` together, choose their first tokens, merge the survivors into ``cache``."""
        width = max(len(requests[i].ids) for i in admitted)
        input_ids = torch.zeros((len(admitted), width), dtype=torch.long)
        mask = torch.zeros((len(admitted), width), dtype=torch.long)
        for row, i in enumerate(admitted):
            ids = requests[i].ids
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids) :] = 1
        # As generate: padding columns get position 0 (they are masked out anyway).
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        fresh = DynamicCache()
        outputs = self._model(
            input_ids=input_ids.to(self._device),
            attention_mask=mask.to(self._device),
            position_ids=position_ids.to(self._device),
            past_key_values=fresh,
            use_cache=True,
            **self._keep_last,
        )
        logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)
        del outputs

        seqs: list[_Seq] = []
        rows: list[int] = []  # each sequence's prefill row
        for row, i in enumerate(admitted):
            for sample in range(requests[i].samples):
                seqs.append(_Seq(i, sample, length=len(requests[i].ids)))
                rows.append(row)
        expand = torch.tensor(rows, dtype=torch.long, device=logits.device)
        kept = self._advance(requests, seqs, logits.index_select(0, expand), out)
        if not kept:
            return cache if running else None
        new_rows = torch.tensor([rows[k] for k in kept], dtype=torch.long, device=self._device)
        new_layers = [(k.index_select(0, new_rows), v.index_select(0, new_rows)) for k, v in _kv(fresh)]
        new_seqs = [seqs[k] for k in kept]
        if cache is None or not running:
            merged = DynamicCache()
            _set_layers(merged, new_layers)
        else:
            old_width = _width(cache)
            total = max(old_width, width)
            merged = cache
            _set_layers(
                merged,
                [
                    (
                        _left_pad([(old_k, old_width), (k, width)], total),
                        _left_pad([(old_v, old_width), (v, width)], total),
                    )
                    for (old_k, old_v), (k, v) in zip(_kv(cache), new_layers, strict=True)
                ],
            )
        running.extend(new_seqs)
        return merged

    def _step(
        self, requests: Sequence[Request], running: list[_Seq], cache: DynamicCache, out: list[list[list[int]]]
    ) -> DynamicCache:
        """One decode step for every running sequence; finished ones leave the batch and the cache."""
        width = _width(cache)
        lengths = torch.tensor([s.length for s in running], dtype=torch.long)
        # Row b's real columns are the last lengths[b] of the cache, then the token fed now.
        columns = torch.arange(width + 1, dtype=torch.long)
        mask = (columns[None, :] >= (width - lengths)[:, None]).long()
        last = torch.tensor([[s.tokens[-1]] for s in running], dtype=torch.long)
        outputs = self._model(
            input_ids=last.to(self._device),
            attention_mask=mask.to(self._device),
            position_ids=lengths[:, None].to(self._device),
            past_key_values=cache,
            use_cache=True,
            **self._keep_last,
        )
        logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)
        del outputs
        for seq in running:
            seq.length += 1
        kept = self._advance(requests, running, logits, out)
        if len(kept) == len(running):
            return cache
        running[:] = [running[k] for k in kept]
        if not running:
            return DynamicCache()
        # Drop finished rows, then the left columns that only padding uses now.
        index = torch.tensor(kept, dtype=torch.long, device=self._device)
        cut = _width(cache) - max(s.length for s in running)
        _set_layers(
            cache,
            [(k.index_select(0, index)[:, :, cut:], v.index_select(0, index)[:, :, cut:]) for k, v in _kv(cache)],
        )
        return cache

    def _advance(
        self, requests: Sequence[Request], seqs: list[_Seq], logits: torch.Tensor, out: list[list[list[int]]]
    ) -> list[int]:
        """Choose each sequence's next token from its logits row; record finished ones; return the others."""
        chosen = [0] * len(seqs)
        groups: dict[int, list[int]] = {}
        for k, seq in enumerate(seqs):
            groups.setdefault(id(requests[seq.request].sampler), []).append(k)
        for members in groups.values():
            sampler = requests[seqs[members[0]].request].sampler
            whole = len(members) == len(seqs)
            index = None if whole else torch.tensor(members, dtype=torch.long, device=logits.device)
            scores = logits if index is None else logits.index_select(0, index)
            for row, k in enumerate(members):  # min_tokens: no terminator yet
                request = requests[seqs[k].request]
                if request.terminators and len(seqs[k].tokens) < request.min_tokens:
                    scores[row, list(request.terminators)] = -float("inf")
            if sampler.processors:
                ids = self._token_matrix(requests, [seqs[k] for k in members]) if sampler.needs_ids else None
                scores = sampler.processors(
                    cast(torch.LongTensor, ids if ids is not None else _NO_IDS), cast(torch.FloatTensor, scores)
                )
            if sampler.do_sample:
                picks = self._sample(requests, [seqs[k] for k in members], scores)
            else:
                picks = torch.argmax(scores, dim=-1).tolist()
            for k, token in zip(members, picks, strict=True):
                chosen[k] = int(token)

        kept: list[int] = []
        for k, seq in enumerate(seqs):
            request = requests[seq.request]
            seq.tokens.append(chosen[k])
            done = (
                chosen[k] in request.terminators
                or len(seq.tokens) >= request.max_new
                or (request.stopped is not None and request.stopped(seq.tokens))
            )
            if done:
                out[seq.request][seq.sample] = seq.tokens
            else:
                kept.append(k)
        return kept

    def _sample(self, requests: Sequence[Request], seqs: list[_Seq], scores: torch.Tensor) -> list[int]:
        """``torch.multinomial`` as ``generate`` samples; a seeded request draws from its own generator."""
        probs = torch.nn.functional.softmax(scores, dim=-1)
        picks = [0] * len(seqs)
        by_generator: dict[int, list[int]] = {}
        for k, seq in enumerate(seqs):
            generator = requests[seq.request].generator
            by_generator.setdefault(id(generator) if generator is not None else 0, []).append(k)
        for key, members in by_generator.items():
            generator = requests[seqs[members[0]].request].generator if key else None
            index = torch.tensor(members, dtype=torch.long, device=probs.device)
            drawn = torch.multinomial(probs.index_select(0, index), num_samples=1, generator=generator)
            for k, token in zip(members, drawn.squeeze(1).tolist(), strict=True):
                picks[k] = int(token)
        return picks

    def _token_matrix(self, requests: Sequence[Request], seqs: list[_Seq]) -> torch.Tensor:
        """Prompt plus generated tokens per sequence, left-padded with the row's own first token (a token
        the row already holds, so the repetition penalty sees no extra token)."""
        rows = [requests[s.request].ids + s.tokens for s in seqs]
        width = max(len(r) for r in rows)
        return torch.tensor([[r[0]] * (width - len(r)) + r for r in rows], dtype=torch.long, device=self._device)


_NO_IDS = torch.zeros((0, 0), dtype=torch.long)  # processors that do not read input_ids


def _kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (keys, values), ``[rows, heads, columns, dim]``."""
    pairs = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if type(layer) is not DynamicLayer or keys is None or values is None:
            raise RuntimeError(f"continuous batching needs plain DynamicLayer caches, got {type(layer).__name__}")
        pairs.append((keys, values))
    return pairs


def _width(cache: DynamicCache) -> int:
    return int(_kv(cache)[0][0].shape[-2])


def _set_layers(cache: DynamicCache, tensors: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Give ``cache`` one (keys, values) pair per layer."""
    if not cache.layers:
        cache.layers = [DynamicLayer() for _ in tensors]  # type: ignore[no-untyped-call]
    layer: Any
    for layer, (keys, values) in zip(cache.layers, tensors, strict=True):
        if not layer.is_initialized:
            layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values


def _left_pad(parts: list[tuple[torch.Tensor, int]], width: int) -> torch.Tensor:
    """Stack ``[rows, heads, w, dim]`` tensors along rows, each right-aligned in ``width`` columns (zeros left)."""
    first = parts[0][0]
    rows = sum(int(t.shape[0]) for t, _ in parts)
    stacked = first.new_zeros((rows, first.shape[1], width, first.shape[3]))
    start = 0
    for tensor, w in parts:
        stacked[start : start + tensor.shape[0], :, width - w :] = tensor
        start += int(tensor.shape[0])
    return stacked
