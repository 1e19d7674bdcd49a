"""llm-infer-dagster: offline LLM batch inference as partitioned Dagster assets.

The two ways into a Dagster project of your own (imported on first use, so ``import llm_infer_dagster.shards``
stays free of Dagster):

- ``LLMInferComponent``: ``type: llm_infer_dagster.LLMInferComponent`` in a ``defs.yaml``;
- ``llm_task_definitions(task_folder, output_path=..., model=...)``: one task's ``Definitions`` from Python.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm_infer_dagster.orchestration.component import LLMInferComponent
    from llm_infer_dagster.orchestration.task_definitions import llm_task_definitions

__all__ = ["LLMInferComponent", "llm_task_definitions"]


def __dir__() -> list[str]:
    """The lazy names too: ``dg list components`` finds the Component by listing this module."""
    return sorted([*globals(), *__all__])


def __getattr__(name: str) -> Any:
    if name == "LLMInferComponent":
        from llm_infer_dagster.orchestration.component import LLMInferComponent

        return LLMInferComponent
    if name == "llm_task_definitions":
        from llm_infer_dagster.orchestration.task_definitions import llm_task_definitions

        return llm_task_definitions
    raise AttributeError(f"module 'llm_infer_dagster' has no attribute {name!r}")
