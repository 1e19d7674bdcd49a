"""A pooling task's completions (``embed``, ``classify``, ``reward``): which kind a frame holds, and each row's
value as ``extract_answer`` receives it.

``extract_answer`` (and so ``score``) gets, instead of the response text: for ``embed`` the vector (a list of
floats), for ``classify`` a ``{label: probability}`` dict in the head's label order, for ``reward`` the score
(a float). A row with an error gets nothing (as for text: its completion failed).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from llm_infer_dagster.shards.tables import POOLED_SCHEMAS


def pooled_kind(completions: pl.DataFrame) -> str | None:
    """``embed`` / ``classify`` / ``reward`` for a pooling task's completions, None for text."""
    return next((k for k, cols in POOLED_SCHEMAS.items() if set(cols) <= set(completions.columns)), None)


def pooled_values(completions: pl.DataFrame) -> list[Any] | None:
    """Each row's value as ``extract_answer`` receives it (None where the row has none); None for text."""
    kind = pooled_kind(completions)
    if kind == "embed":
        return [list(v) if v is not None else None for v in completions["embedding"].to_list()]
    if kind == "classify":
        rows = zip(completions["labels"].to_list(), completions["probs"].to_list(), strict=True)
        return [dict(zip(ls, ps, strict=True)) if ls is not None and ps is not None else None for ls, ps in rows]
    if kind == "reward":
        return completions["reward"].to_list()
    return None


def pooled_metadata(completions: pl.DataFrame) -> dict[str, Any]:
    """What a completions shard's metadata says of its pooled values: the task, and the dimension or labels."""
    kind = pooled_kind(completions)
    if kind is None:
        return {}
    out: dict[str, Any] = {"task": kind}
    if kind == "embed":
        dtype = completions.schema["embedding"]
        dim = dtype.size if isinstance(dtype, pl.Array) else None
        out["dimension"] = int(dim) if dim is not None else 0
    elif kind == "classify":
        labels: list[str] = next((ls for ls in completions["labels"].to_list() if ls), [])
        out["labels"] = ", ".join(labels)
        out["dimension"] = len(labels)
    else:
        out["dimension"] = 1
    return out
