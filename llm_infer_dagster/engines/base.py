"""The engine contract shared by the HF and vLLM backends.

A prompt is either plain text (sent as is) or a list of chat messages
(``[{"role": ..., "content": ...}]``), which the engine renders with the model's own chat template.
An engine never raises for one bad prompt (e.g. longer than the model accepts): that prompt comes back
as a :class:`Completion` with ``error`` set, so one row cannot sink a shard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

ChatMessages = list[dict[str, str]]
Prompt = str | ChatMessages


@dataclass
class Completion:
    """All ``n`` samples for one prompt, in sample order."""

    responses: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)  # "stop" | "length" per sample
    prompt_tokens: int = 0
    completion_tokens: int = 0  # summed over the n samples
    error: str | None = None

    @property
    def response(self) -> str | None:
        """The first sample, the seed's ``model_response``."""
        return self.responses[0] if self.responses else None


class Engine(Protocol):
    """A loaded model. Load once per worker process; call :meth:`generate` for many shards."""

    name: str  # "hf" | "vllm"
    model_path: str

    def generate(self, prompts: Sequence[Prompt], sampling: Mapping[str, Any]) -> list[Completion]:
        """Return one Completion per prompt, in input order."""
        ...

    def close(self) -> None:
        """Release the model (best effort; the owning process exiting is what frees GPU memory)."""
        ...
