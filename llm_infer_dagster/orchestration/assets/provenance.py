"""Data-provenance tags for the per-shard materializations the streaming step logs as each shard lands.

Dagster's stale status compares a materialization's tags with what is current: its code version, and per
parent the data version it was made from plus an event pointer (the storage id up to which the parent's
records were seen). Dagster writes these itself only for outputs returned at the end of a step, and for a
step over a range of partitions it records one combined input version for the whole range. The step logs
each shard itself instead, the moment it is written, so it computes the same tags per shard, exactly as
Dagster computes them (``compute_logical_data_version``; the tag names are Dagster's), with the pointer taken
after the parent's own record was written. These are private Dagster names, from ``dagster_internals/private.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

from dagster import AssetKey, DataVersion

from llm_infer_dagster.orchestration.dagster_internals.private import (
    CODE_VERSION_TAG,
    DATA_VERSION_TAG,
    NULL_EVENT_POINTER,
    compute_logical_data_version,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)


def shard_version(code_version: str, inputs: Mapping[AssetKey, DataVersion]) -> DataVersion:
    """The data version Dagster gives a materialization made by ``code_version`` from ``inputs``."""
    return compute_logical_data_version(code_version, dict(inputs))


def shard_tags(
    code_version: str, inputs: Mapping[AssetKey, DataVersion], pointer: int | None
) -> tuple[DataVersion, dict[str, str]]:
    """(data version, tags) of one shard's materialization made by ``code_version`` from ``inputs``.

    ``pointer``: a storage id at or after every parent record the shard was made from (``None`` if none).
    """
    version = shard_version(code_version, inputs)
    tags = {CODE_VERSION_TAG: code_version, DATA_VERSION_TAG: version.value}
    for dep, dep_version in inputs.items():
        tags[get_input_data_version_tag(dep)] = dep_version.value
        tags[get_input_event_pointer_tag(dep)] = str(pointer) if pointer else NULL_EVENT_POINTER
    return version, tags
