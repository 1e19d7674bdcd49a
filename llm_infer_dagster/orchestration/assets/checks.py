"""The per-shard quality checks (``shards/quality.py``) as Dagster asset checks: specs and evaluations.

Each model's ``completions`` asset gets ``error_rows``, ``empty_completions`` and ``cut_at_max_tokens``, its
``answers`` asset ``extraction_failed``; all are partitioned like their asset, so the UI shows each shard's
result. ``pipeline.py`` evaluates them right after it records a shard, and logs one evaluation per selected
check and shard (it never yields them as outputs: the step covers many shards), a shard's evaluations held and
written together (``holding_evaluations``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    PartitionsDefinition,
    PreviewWarning,
)

from llm_infer_dagster.orchestration.dagster_internals.private import AssetCheckEvaluationTargetMaterializationData
from llm_infer_dagster.orchestration.dagster_internals.sqlite_events import PooledSqliteEventLogStorage
from llm_infer_dagster.shards.quality import ABOUT, CheckResult
from llm_infer_dagster.tasks.task_settings import ANSWERS_CHECKS, COMPLETIONS_CHECKS, SETTINGS_FILE, CheckSettings

__all__ = ["check_key", "check_specs", "evaluation", "holding_evaluations", "latest_target"]


def check_specs(
    checks: CheckSettings,
    models: Mapping[str | None, tuple[AssetKey, AssetKey]],
    partitions_def: PartitionsDefinition,
) -> list[AssetCheckSpec]:
    """Every model's completions and answers checks, with the task's thresholds in their descriptions."""
    specs: list[AssetCheckSpec] = []
    if not checks.enabled:
        return specs
    for comp_key, answers_key in models.values():
        for asset, names in ((comp_key, COMPLETIONS_CHECKS), (answers_key, ANSWERS_CHECKS)):
            for name in names:
                t = checks.threshold(name)
                blocks = (
                    " Blocking: a shard that fails it with ERROR gets no answers, and the shard fails."
                    if t.blocking and asset == comp_key
                    else ""
                )
                # A partitions_def on a check is "preview" in Dagster 1.13; per shard is the point of these checks.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", PreviewWarning)
                    spec = AssetCheckSpec(
                        name,
                        asset=asset,
                        partitions_def=partitions_def,
                        blocking=t.blocking,
                        description=f"Per shard: the {ABOUT[name]}. WARN above {t.warn:g}, "
                        + (f"ERROR above {t.error:g}" if t.error < 1 else "never ERROR")
                        + f" (checks.{name} in the task's {SETTINGS_FILE}).{blocks}",
                    )
                specs.append(spec)
    return specs


def latest_target(
    instance: DagsterInstance, asset: AssetKey, shard: str
) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The shard's latest materialization: what an evaluation judged (the UI shows only current evaluations).

    The step's own event log remembers the materialization it just stored (no query per shard); another
    storage is asked.
    """
    storage = instance.event_log_storage
    if isinstance(storage, PooledSqliteEventLogStorage) and (known := storage.stored_materialization(asset, shard)):
        storage_id, run_id, timestamp = known
        return AssetCheckEvaluationTargetMaterializationData(storage_id=storage_id, run_id=run_id, timestamp=timestamp)
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=asset, asset_partitions=[shard]), limit=1)
    if not records.records:
        return None
    mat = records.records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=mat.storage_id, run_id=mat.run_id, timestamp=mat.timestamp
    )


@contextmanager
def holding_evaluations(instance: DagsterInstance) -> Iterator[None]:
    """The check evaluations logged inside are written as one batch at its end, where the storage can.

    On the pooled sqlite log that is two transactions for a shard's checks instead of three each; other
    storages write each as it is logged (PostgreSQL's batch writer takes no check evaluations).
    """
    storage = instance.event_log_storage
    if isinstance(storage, PooledSqliteEventLogStorage):
        with storage.holding_check_evaluations():
            yield
    else:
        yield


def evaluation(
    asset: AssetKey,
    shard: str,
    result: CheckResult,
    model_name: str,
    target: AssetCheckEvaluationTargetMaterializationData | None,
) -> AssetCheckEvaluation:
    """``result`` as Dagster's evaluation of check ``result.name`` on ``asset``'s shard ``shard``."""
    return AssetCheckEvaluation(
        asset_key=asset,
        check_name=result.name,
        passed=result.passed,
        severity=AssetCheckSeverity.WARN if result.severity == "WARN" else AssetCheckSeverity.ERROR,
        description=result.description,
        metadata={
            "share": round(result.share, 4),
            "count": result.count,
            "rows": result.rows,
            "threshold_warn": result.warn,
            "threshold_error": result.error,
            "blocking": result.blocking,
            "model_name": model_name,
        },
        partition=shard,
        blocking=result.blocking,
        target_materialization_data=target,
    )


def check_key(asset: AssetKey, result: CheckResult) -> AssetCheckKey:
    return AssetCheckKey(asset, result.name)
