"""Structured outputs on the HF backend: xgrammar's grammars as a ``transformers`` logits processor.

Why xgrammar (of the three libraries the vLLM install brings): it is vLLM's default structured-output backend,
so a task's JSON schema, regex, choice or EBNF grammar is compiled by the same code on both engines and means
the same thing; it covers all four kinds (lm-format-enforcer has no grammars; llguidance takes Lark grammars,
not the EBNF vLLM's default backend reads); and it masks logits on CPU as well as CUDA.

xgrammar ships a processor for ``transformers`` (``xgrammar.contrib.hf``), but it asserts that every later
token of a row is accepted, which fails for a row that ended by another rule (a stop string, a stop token: HF
then pads it). :class:`GrammarLogitsProcessor` stops constraining such a row instead. The spec is the one
``tasks/structured.py`` checked when the task loaded; ``engines/structured.py`` makes its grammar.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from llm_infer_dagster.engines.structured import spec_grammar

__all__ = ["GrammarCompilerCache", "GrammarLogitsProcessor"]


class GrammarCompilerCache:
    """Compiles specs for one tokenizer, once each (a JSON schema takes milliseconds to seconds)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids) or None
        )
        self._compiler = xgr.GrammarCompiler(info)
        self._compiled: dict[str, Any] = {}

    def compiled(self, spec: Mapping[str, Any]) -> Any:
        key = json.dumps(dict(spec), sort_keys=True)
        if key not in self._compiled:
            self._compiled[key] = self._compiler.compile_grammar(spec_grammar(spec))
        return self._compiled[key]


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks each row's logits to the tokens its grammar allows next; one instance per ``generate`` call."""

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled
        self._matchers: list[Any] = []
        self._active: list[bool] = []
        self._bitmask: torch.Tensor | None = None
        self._started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import xgrammar as xgr

        rows = int(input_ids.shape[0])
        if not self._matchers:
            self._matchers = [xgr.GrammarMatcher(self._compiled) for _ in range(rows)]
            self._active = [True] * rows
            self._bitmask = xgr.allocate_token_bitmask(rows, self._compiled.tokenizer_info.vocab_size)
        elif self._started:
            for i in range(rows):
                if not self._active[i] or self._matchers[i].is_terminated():
                    continue
                if not self._matchers[i].accept_token(int(input_ids[i, -1])):
                    self._active[i] = False  # the row ended by another rule and is being padded
        self._started = True
        assert self._bitmask is not None
        indices = [i for i in range(rows) if self._active[i] and not self._matchers[i].is_terminated()]
        for i in indices:
            self._matchers[i].fill_next_token_bitmask(self._bitmask, i)
        if indices:
            if scores.device.type in ("cpu", "cuda"):  # xgrammar masks in place on either
                xgr.apply_token_bitmask_inplace(scores, self._bitmask.to(scores.device), indices=indices)
            else:
                work = scores.to("cpu")
                xgr.apply_token_bitmask_inplace(work, self._bitmask, indices=indices)
                scores.copy_(work.to(scores.device))
        return scores
