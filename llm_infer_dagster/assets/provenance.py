"""Data-provenance tags for the per-shard materializations a step logs while it is still running.

Dagster tags the materializations it emits at the end of a step with the asset's code version and the data
versions of its inputs; that is what its stale status compares. ``completions`` also logs each shard the moment
it lands (so a killed run keeps it). Without the same tags such a shard would have no provenance and would
look fresh forever, even after the model or the prompt changed. This computes them exactly as Dagster does
(``dagster._core.execution.plan.execute_step``: internals, hence the pinned Dagster minor version).
"""

from __future__ import annotations

from dagster import AssetExecutionContext, AssetKey
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_TAG,
    DEFAULT_DATA_VERSION,
    NULL_EVENT_POINTER,
    compute_logical_data_version,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)


def provenance_tags(context: AssetExecutionContext, asset_key: AssetKey) -> dict[str, str]:
    """The tags Dagster would put on a materialization of ``asset_key`` made by this step now."""
    step = context.op_execution_context._step_execution_context  # noqa: SLF001 - Dagster gives no public hook
    asset = step.job_def.asset_layer.get(asset_key)
    code_version = asset.code_version or step.dagster_run.run_id
    tags: dict[str, str] = {CODE_VERSION_TAG: code_version}
    inputs = {}
    for dep in asset.parent_keys:
        info = step.maybe_fetch_and_get_input_asset_version_info(dep)
        version = (info.data_version if info else None) or DEFAULT_DATA_VERSION
        inputs[dep] = version
        tags[get_input_data_version_tag(dep)] = version.value
        tags[get_input_event_pointer_tag(dep)] = (
            str(info.storage_id) if info and info.storage_id else NULL_EVENT_POINTER
        )
    tags[DATA_VERSION_TAG] = compute_logical_data_version(code_version, inputs).value
    return tags
