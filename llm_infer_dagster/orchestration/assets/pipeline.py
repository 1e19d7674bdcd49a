"""The Dagster step over the streaming loop: it records what ``pipeline/stream.py`` reports, as it reports it.

Each shard the loop reports landed becomes an ``AssetMaterialization`` of its partition, with the provenance
tags Dagster's stale status reads (``provenance.py``: the code version, and the parent shard's data version
and event pointer); each reported check result becomes an ``AssetCheckEvaluation``. A killed step keeps every
shard recorded so far. What the loop does (leases, workers, exports, checks) is not here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dagster import AssetExecutionContext, AssetKey, AssetMaterialization, DagsterEventType, DataVersion, Failure
from dagster import MetadataValue as MV

from llm_infer_dagster.deployment import Deployment
from llm_infer_dagster.orchestration.asset_keys import asset_of, model_of, task_key
from llm_infer_dagster.orchestration.assets.checks import evaluation, holding_evaluations, latest_target
from llm_infer_dagster.orchestration.assets.provenance import shard_tags
from llm_infer_dagster.orchestration.dagster_internals.private import DATA_VERSION_TAG, DEFAULT_DATA_VERSION
from llm_infer_dagster.orchestration.dagster_internals.sqlite_events import PooledSqliteEventLogStorage
from llm_infer_dagster.orchestration.registry import recorded_input_versions
from llm_infer_dagster.orchestration.settings import RunSettings
from llm_infer_dagster.pipeline.events import AssetRef, Checked, FilePath, Landed, Markdown, StreamFailed
from llm_infer_dagster.pipeline.stream import INPUT, PROMPTS, RAW, ModelTarget, ShardStream, StreamSettings
from llm_infer_dagster.tasks.loader import TaskConfig


class DagsterSink:
    """Records the loop's reports in the step's Dagster run; keeps each shard's data version for its children."""

    def __init__(self, context: AssetExecutionContext, task: TaskConfig, shard_keys: Sequence[str]) -> None:
        self.context, self.log, self.instance = context, context.log, context.instance
        self.name, self.shard_keys = task.dagster_name, list(shard_keys)
        self.data_versions: dict[AssetKey, dict[str, DataVersion]] = {}
        self.pointers: dict[tuple[AssetRef, str], int | None] = {}
        # Every record made before this step (the input's, earlier runs' shards) is at or below this id.
        self.floor = self.instance.event_log_storage.get_maximum_record_id() or 0

    def key(self, ref: AssetRef) -> AssetKey:
        return task_key(self.name, ref.asset, ref.model)

    def load_versions(self, ref: AssetRef) -> None:
        """What Dagster recorded for ``ref``'s shards before this step (one query for all of them)."""
        asset = self.key(ref)
        if ref == INPUT:
            versions = recorded_input_versions(self.instance, asset, self.shard_keys)
        else:
            tags = self.instance.event_log_storage.get_latest_tags_by_partition(
                asset, DagsterEventType.ASSET_MATERIALIZATION, [DATA_VERSION_TAG], asset_partitions=self.shard_keys
            )
            versions = {shard: t[DATA_VERSION_TAG] for shard, t in tags.items() if DATA_VERSION_TAG in t}
        for shard, version in versions.items():
            self.data_versions.setdefault(asset, {})[shard] = DataVersion(version)

    def making(self, ref: AssetRef, shard: str) -> None:
        # A storage id at or after every record the shard made now is made from: one made before this step
        # (under the floor) or by this step (the pooled log knows the newest it wrote; other logs are asked).
        storage = self.instance.event_log_storage
        if isinstance(storage, PooledSqliteEventLogStorage):
            self.pointers[(ref, shard)] = max(self.floor, storage.stored_up_to()) or None
        else:
            self.pointers[(ref, shard)] = storage.get_maximum_record_id()

    def landed(self, event: Landed) -> None:
        asset, parent = self.key(event.ref), self.key(event.parent)
        inputs = {parent: self.data_versions.get(parent, {}).get(event.shard, DEFAULT_DATA_VERSION)}
        version, tags = shard_tags(event.code_version, inputs, self.pointers.pop((event.ref, event.shard), None))
        self.data_versions.setdefault(asset, {})[event.shard] = version
        md = {k: _metadata(v) for k, v in event.metadata.items()}
        self.context.log_event(AssetMaterialization(asset_key=asset, partition=event.shard, metadata=md, tags=tags))

    def checked(self, event: Checked) -> None:
        asset = self.key(event.ref)
        target = latest_target(self.instance, asset, event.shard)
        with holding_evaluations(self.instance):  # one write for the shard's checks
            for r in event.results:
                self.context.log_event(evaluation(asset, event.shard, r, event.ref.model or "default", target))


def _metadata(value: Any) -> Any:
    if isinstance(value, FilePath):
        return MV.path(str(value))
    if isinstance(value, Markdown):
        return MV.md(str(value))
    return value


def run_step(
    context: AssetExecutionContext,
    task: TaskConfig,
    deployment: Deployment,
    settings: RunSettings,
    *,
    versions: dict[str, str],
    targets: list[ModelTarget],
    make_raw: bool,
    make_prompts: bool,
) -> None:
    """Run the loop over the step's shards and selected assets, recording each shard as it lands.

    A loop that ends with failed shards fails the step with their causes in its metadata (``failed_shards``:
    shard -> the first line of why, what ``llm-infer``'s last line reports; ``bad_input``).
    """
    sink = DagsterSink(context, task, context.partition_keys)
    sink.load_versions(INPUT)
    for ref, made_here in ((RAW, make_raw), (PROMPTS, make_prompts)):
        if not made_here:
            sink.load_versions(ref)
    for t in targets:
        if t.make_answers and not t.make_completions:
            sink.load_versions(t.completions)
    checks = {
        (AssetRef(asset_of(k.asset_key), model_of(k.asset_key)), k.name) for k in context.selected_asset_check_keys
    }
    stream = ShardStream(
        sink, task, deployment,
        StreamSettings(workers=settings.workers, tensor_parallel_size=settings.tensor_parallel_size,
                       use_cpu=settings.use_cpu, ray_address=settings.ray_address, timeout=settings.timeout,
                       save_text=settings.save_text),
        shard_keys=list(context.partition_keys), run_id=context.run.run_id, versions=versions, targets=targets,
        make_raw=make_raw, make_prompts=make_prompts, selected_checks=checks,
    )  # fmt: skip
    try:
        stream.run()
    except StreamFailed as exc:
        metadata: dict[str, Any] | None = (
            {"failed_shards": json.dumps(exc.failed_shards), "bad_input": exc.bad_input}
            if exc.failed_shards is not None
            else None
        )
        raise Failure(description=exc.description, metadata=metadata) from None
