"""Which finished shards are out of date: Dagster's own stale status, per shard, for run planning.

``llm-infer`` and the missing-shards schedule redo what the UI shows as stale (another model, sampling,
prompt, ``extract_answer``, ``--limit``, or grown/edited input rows), not only what is missing, so a result made
with other settings is never silently kept. The UI's "Materialize stale" uses the same resolver.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from dagster import AssetKey, DagsterInstance
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime


def stale_resolver(instance: DagsterInstance, asset_graph: BaseAssetGraph) -> CachingStaleStatusResolver:
    """The resolver behind the UI's stale badges, over ``asset_graph`` (e.g. ``defs.resolve_asset_graph()``)."""
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph, loading_context=view)


def stale_shards(
    resolver: CachingStaleStatusResolver,
    chain: Iterable[AssetKey],
    answers: AssetKey,
    keys: Iterable[str],
    done_completions: Collection[str],
    done_answers: Collection[str],
) -> tuple[set[str], set[str]]:
    """(shards to redo in full: any of ``chain`` (raw, prompts, completions) stale; shards to re-extract only).

    Only materialized shards are asked about: a missing one is planned as missing anyway.
    """
    keys = list(keys)
    full = stale_keys(resolver, chain, [k for k in keys if k in done_completions])
    extract = stale_keys(resolver, [answers], [k for k in keys if k in done_answers and k not in full])
    return full, extract


def stale_keys(resolver: CachingStaleStatusResolver, assets: Iterable[AssetKey], keys: Iterable[str]) -> set[str]:
    """The shard keys for which any of ``assets`` is stale (materialized, but made from other inputs or code)."""
    assets = list(assets)
    return {k for k in keys if any(resolver.get_status(a, k) == StaleStatus.STALE for a in assets)}
