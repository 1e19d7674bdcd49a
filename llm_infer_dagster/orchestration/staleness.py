"""Which finished shards are out of date, for run planning: Dagster's data versions, read in bulk.

``llm-infer`` and the missing-shards schedule redo what is stale (another model, sampling, prompt,
``extract_answer``, ``--limit``, or grown/edited input rows), not only what is missing, so a result made with
other settings is never silently kept.

Each shard's materialization carries the data version Dagster derives from its code version and its parent
shard's data version (``compute_logical_data_version``; see ``assets/provenance.py``). So a shard is fresh
exactly when its recorded data version equals the one its asset's *current* code version would derive from
its parent's recorded version. That needs one query per asset for all shards
(``ChainVersions``), where Dagster's per-partition stale resolver (``stale_resolver``, what the UI's badges
use) makes several queries per asset and shard: about 30 s at 2,000 shards. ``tests/orchestration/test_staleness.py``
checks that both agree after every kind of change.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from dagster import AssetKey, DagsterEventType, DagsterInstance, DataVersion

from llm_infer_dagster.orchestration.asset_keys import ANSWERS, COMPLETIONS, INPUT, PROMPTS, RAW, task_key
from llm_infer_dagster.orchestration.dagster_internals.private import (
    DATA_VERSION_TAG,
    DEFAULT_DATA_VERSION,
    AssetGraphView,
    CachingStaleStatusResolver,
    StaleStatus,
    TemporalContext,
    compute_logical_data_version,
)
from llm_infer_dagster.orchestration.registry import recorded_input_versions


class AssetNodes(Protocol):
    """What staleness reads of an asset graph (``defs.resolve_asset_graph()``, a repository's ``asset_graph``)."""

    def get(self, key: AssetKey, /) -> Any: ...  # the asset's node: its ``code_version``


def stale_resolver(instance: DagsterInstance, asset_graph: Any) -> CachingStaleStatusResolver:
    """The resolver behind the UI's stale badges, over ``asset_graph`` (e.g. ``defs.resolve_asset_graph()``)."""
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=datetime.now(UTC), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph, loading_context=view)


def stale_keys(resolver: CachingStaleStatusResolver, assets: Iterable[AssetKey], keys: Iterable[str]) -> set[str]:
    """The shard keys for which any of ``assets`` is stale, per Dagster's own resolver (one shard at a time)."""
    assets = list(assets)
    return {k for k in keys if any(resolver.get_status(a, k) == StaleStatus.STALE for a in assets)}


@dataclass(frozen=True)
class Link:
    """One asset of a chain: its current code version and the data version recorded per shard."""

    asset: AssetKey
    code_version: str
    recorded: Mapping[str, str]


def stale_in_chain(
    keys: Iterable[str], source_key: AssetKey, source: Mapping[str, str], chain: Sequence[Link]
) -> dict[AssetKey, set[str]]:
    """Per asset of ``chain`` (each the parent of the next), the recorded shards that are stale.

    ``source``: the chain's first parent (the observed input), data version per shard. A shard of an asset
    is stale when its recorded data version is not what the asset's current code version derives from its
    parent's recorded one. That is Dagster's rule, and like Dagster's it does not propagate: below a shard whose
    input rows changed only ``raw`` is stale until raw is redone. Planners take the union down the chain.
    Pure: no Dagster instance.
    """
    out: dict[AssetKey, set[str]] = {link.asset: set() for link in chain}
    for key in keys:
        parent_key, parent_version = source_key, source.get(key, DEFAULT_DATA_VERSION.value)
        for link in chain:
            recorded = link.recorded.get(key)
            if recorded is None:
                break  # not materialized: missing, not stale (what is below it was made from something else)
            expected = compute_logical_data_version(link.code_version, {parent_key: DataVersion(parent_version)})
            if expected.value != recorded:
                out[link.asset].add(key)
            parent_key, parent_version = link.asset, recorded
    return out


class ChainVersions:
    """The recorded data versions of a task's assets, read once (one query per asset), for planning."""

    def __init__(self, instance: DagsterInstance, graph: AssetNodes, input_key: AssetKey, keys: Sequence[str]):
        self.instance, self.graph, self.input_key, self.keys = instance, graph, input_key, list(keys)
        self._recorded: dict[AssetKey, dict[str, str]] = {}
        self.source = recorded_input_versions(instance, input_key, self.keys)

    def _read(self, asset: AssetKey, kind: DagsterEventType) -> dict[str, str]:
        if not self.keys:
            return {}
        tags = self.instance.event_log_storage.get_latest_tags_by_partition(
            asset, kind, [DATA_VERSION_TAG], asset_partitions=self.keys
        )
        return {k: t[DATA_VERSION_TAG] for k, t in tags.items() if DATA_VERSION_TAG in t}

    def recorded(self, asset: AssetKey) -> dict[str, str]:
        if asset not in self._recorded:
            self._recorded[asset] = self._read(asset, DagsterEventType.ASSET_MATERIALIZATION)
        return self._recorded[asset]

    def stale(self, chain: Sequence[AssetKey]) -> dict[AssetKey, set[str]]:
        """Per asset of ``chain`` (input's child first), its stale shards."""
        links = []
        for asset in chain:
            code_version = self.graph.get(asset).code_version
            if code_version is None:
                raise ValueError(f"{asset.to_user_string()} has no code version; staleness needs one")
            links.append(Link(asset, code_version, self.recorded(asset)))
        return stale_in_chain(self.keys, self.input_key, self.source, links)


def stale_shards(
    versions: ChainVersions,
    chain: Sequence[AssetKey],
    answers: AssetKey,
    keys: Iterable[str],
    done_completions: Collection[str],
    done_answers: Collection[str],
) -> tuple[set[str], set[str]]:
    """(shards to redo in full: any of ``chain`` (raw, prompts, completions) stale; shards to re-extract only)."""
    stale = versions.stale([*chain, answers])
    keys = list(keys)
    full = {k for k in keys if k in done_completions and any(k in stale[a] for a in chain)}
    extract = {k for k in keys if k in done_answers and k not in full and k in stale[answers]}
    return full, extract


def stale_shard_sets(
    defs: Any, instance: Any, name: str, keys: list[str], done_comp: set[str], done_answers: set[str]
) -> tuple[set[str], set[str]]:
    """(shards whose raw/prompts/completions are stale, shards whose answers alone are stale) of task ``name``
    in ``defs`` (the definitions of the deployment that would make them)."""
    versions = ChainVersions(instance, defs.resolve_asset_graph(), task_key(name, INPUT), keys)
    chain = [task_key(name, a) for a in (RAW, PROMPTS, COMPLETIONS)]
    return stale_shards(versions, chain, task_key(name, ANSWERS), keys, done_comp, done_answers)
