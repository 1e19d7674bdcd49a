"""Pure run planning: which shards still need which assets, as few Dagster runs as partition ranges allow.

Shared by ``llm-infer`` and the per-task schedule so both resume the same way: shards without completions, or
with stale ones, run all four assets; shards whose answers are missing or stale only re-extract (no model).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from llm_infer_dagster.shards.sharding import contiguous_ranges
from llm_infer_dagster.shards.tables import ASSETS, AssetName


@dataclass(frozen=True)
class RunPlan:
    """One Dagster run: the assets to materialize over the shard range ``first..last``."""

    first: str
    last: str
    assets: tuple[AssetName, ...]

    @property
    def tags(self) -> dict[str, str]:
        return {"dagster/asset_partition_range_start": self.first, "dagster/asset_partition_range_end": self.last}


def plan_runs(
    keys: Sequence[str],
    done_completions: Collection[str],
    done_answers: Collection[str],
    *,
    stale_completions: Collection[str] = (),
    stale_answers: Collection[str] = (),
    rerun: bool = False,
    extract_only: bool = False,
    order: Sequence[str] | None = None,
) -> list[RunPlan]:
    """Runs that bring every shard in ``keys`` (Dagster's partition order) to answered and up to date.

    ``stale_completions``: shards whose raw, prompts or completions are stale (other input rows, prompt,
    model, sampling): redone in full. ``stale_answers``: shards whose answers are stale: re-extracted.
    ``order``: every partition key of the task, when ``keys`` leaves some out (shards that must not be
    redone): a run's partition range never spans one of those.
    """
    if extract_only:
        full: list[str] = []
        extract = [k for k in keys if k in done_completions]
    elif rerun:
        full, extract = list(keys), []
    else:
        full = [k for k in keys if k not in done_completions or k in stale_completions]
        redo = set(full)
        extract = [k for k in keys if k not in redo and (k not in done_answers or k in stale_answers)]
    ordered = keys if order is None else order
    plans = [RunPlan(a, b, ASSETS) for a, b in contiguous_ranges(ordered, full)]
    plans += [RunPlan(a, b, ("answers",)) for a, b in contiguous_ranges(ordered, extract)]
    return plans
