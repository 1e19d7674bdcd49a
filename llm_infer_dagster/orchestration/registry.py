"""Register a task's shards in Dagster: the manifest on disk (``shards/manifest.py``), its shards as dynamic
partitions, and their rows' digests as observations of the task's input asset.

Killed at any point, the next registration completes it: partitions and observations are worked out against
what Dagster has recorded.
"""

from __future__ import annotations

from typing import Any

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    DagsterEventType,
    DagsterInstance,
    DynamicPartitionsDefinition,
)

from llm_infer_dagster.orchestration.asset_keys import INPUT, model_keys, task_key
from llm_infer_dagster.orchestration.dagster_internals.event_batches import report_runless_asset_events
from llm_infer_dagster.orchestration.dagster_internals.private import (
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
)
from llm_infer_dagster.shards.locks import file_lock
from llm_infer_dagster.shards.manifest import (
    Registration,
    delete_results_for_recut,
    plan_registration,
    save_manifest,
    unrecorded_digests,
)
from llm_infer_dagster.shards.store import TaskStore
from llm_infer_dagster.shards.tables import ASSETS
from llm_infer_dagster.tasks.loader import TaskConfig


def partitions_def_for(task: TaskConfig) -> DynamicPartitionsDefinition:
    """One dynamic partitions definition per task: its partitions are its shards."""
    return DynamicPartitionsDefinition(name=f"{task.dagster_name}_shards")


def register_shards(
    instance: DagsterInstance,
    task: TaskConfig,
    store: TaskStore,
    input_path: str | None,
    *,
    shard_size: int | None = None,
    tasks: int | None = None,
    recut: bool = False,
    trim_short: bool = False,
) -> Registration:
    """Plan, save the manifest, add the new shard keys as Dagster partitions, observe changed input rows.

    Killed at any point, the next call completes it: partitions and observations are worked out against what
    Dagster has recorded, not against the previous manifest.
    """
    with file_lock(store.register_lock_path):  # two commands starting at once register one at a time
        reg, to_add = _sync_manifest(
            instance, task, store, input_path, shard_size=shard_size, tasks=tasks, recut=recut, trim_short=trim_short
        )
        if to_add:
            instance.add_dynamic_partitions(_pdef_name(task), to_add)
        report_runless_asset_events(instance, input_events(task, reg))  # one transaction per 500 shards
    return reg


def input_key(task: TaskConfig) -> AssetKey:
    """The task's input rows, an external asset recorded per shard; ``raw`` depends on it."""
    return task_key(task.dagster_name, INPUT)


def input_events(task: TaskConfig, reg: Registration) -> list[AssetObservation | AssetMaterialization]:
    """Two events per shard whose rows are new or changed: an observation and a materialization of the input.

    The observation carries the data version (the rows' digest): Dagster's per-shard staleness reads a
    partitioned external asset's versions from observations only. The materialization, the event Dagster
    documents for data made outside it, carries none and only says the rows are there: the UI counts
    materializations, so the input node then reads ``100% filled`` instead of looking like missing data.
    """
    events: list[AssetObservation | AssetMaterialization] = []
    for key, digest in reg.observed.items():
        shard = reg.manifest.shards[key]
        metadata: dict[str, Any] = {"rows": shard.rows, "file": shard.file, "chunk": shard.chunk,
                                    "row_range": f"{shard.start}..{shard.stop}"}  # fmt: skip
        tags = {DATA_VERSION_TAG: digest, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"}
        events.append(AssetObservation(asset_key=input_key(task), partition=key, tags=tags, metadata=metadata))
        events.append(AssetMaterialization(asset_key=input_key(task), partition=key, metadata=metadata))
    return events


def recorded_input_versions(instance: DagsterInstance, key: AssetKey, shards: list[str]) -> dict[str, str]:
    """Shard -> the input data version Dagster last recorded for it (one query for all shards)."""
    if not shards:
        return {}
    tags = instance.event_log_storage.get_latest_tags_by_partition(
        key, DagsterEventType.ASSET_OBSERVATION, [DATA_VERSION_TAG], asset_partitions=shards
    )
    return {k: t[DATA_VERSION_TAG] for k, t in tags.items() if DATA_VERSION_TAG in t}


def _pdef_name(task: TaskConfig) -> str:
    name = partitions_def_for(task).name
    assert name is not None
    return name


def sync_manifest(
    instance: DagsterInstance,
    task: TaskConfig,
    store: TaskStore,
    input_path: str | None,
    **kwargs: Any,
) -> tuple[Registration, list[str]]:
    """:func:`_sync_manifest` under the task's registration lock (the sensor's entry point)."""
    with file_lock(store.register_lock_path):
        return _sync_manifest(instance, task, store, input_path, **kwargs)


def _sync_manifest(
    instance: DagsterInstance,
    task: TaskConfig,
    store: TaskStore,
    input_path: str | None,
    *,
    shard_size: int | None = None,
    tasks: int | None = None,
    recut: bool = False,
    trim_short: bool = False,
) -> tuple[Registration, list[str]]:
    """Plan and save the manifest; return it with the shard keys Dagster does not know yet (not added).

    Only a re-cut at another shard size forgets old partitions and results (their keys would name other rows);
    anything else keeps every finished shard. ``reg.observed`` holds every shard whose rows' digest Dagster has
    not recorded as the input's data version, so observations a killed registration (or a sensor's tick
    preview) never recorded are recorded by the next one.
    """
    reg = plan_registration(
        task,
        store,
        input_path,
        shard_size=shard_size,
        tasks=tasks,
        default_size=task.settings.shard_size,
        recut=recut,
        trim_short=trim_short,
    )
    if reg.resharded:
        old_keys = _delete_dagster_records(instance, task)
        delete_results_for_recut(store, old_keys)
        reg.new_keys = list(reg.manifest.shards)
    recorded = recorded_input_versions(instance, input_key(task), list(reg.manifest.shards))
    reg.observed = unrecorded_digests(reg.manifest, recorded)
    save_manifest(store, reg.manifest)
    known = set(instance.get_dynamic_partitions(_pdef_name(task)))
    return reg, [k for k in reg.manifest.shards if k not in known]


def _delete_dagster_records(instance: DagsterInstance, task: TaskConfig) -> list[str]:
    """Delete the task's shards from Dagster before a re-cut: every partition key, and every record Dagster
    holds of the task's assets (named models' included) and of its input. Returns the deleted keys.
    """
    pdef_name = _pdef_name(task)
    keys = list(instance.get_dynamic_partitions(pdef_name))
    for key in keys:
        instance.delete_dynamic_partition(pdef_name, key)
    named = [k for m in task.settings.models for k in model_keys(task.dagster_name, m)]
    instance.wipe_assets([task_key(task.dagster_name, a) for a in ASSETS] + named + [input_key(task)])
    return keys


def registered_keys(instance: DagsterInstance, task: TaskConfig) -> list[str]:
    """The task's shard keys in Dagster's partition order."""
    name = partitions_def_for(task).name
    assert name is not None
    return list(instance.get_dynamic_partitions(name))
