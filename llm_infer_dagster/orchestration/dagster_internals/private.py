"""Every private Dagster name (``dagster._...``) the project uses, imported here and nowhere else.

Dagster makes no promise about these between minor versions, so the project pins the minor
(``dagster>=1.13,<1.14``) and ``tests/orchestration/test_dagster_private.py`` checks, per name, what we rely on:
the parameters we pass, the attributes and methods we read or override, the tag values already stored in
users' event logs. On a Dagster upgrade: add the new minor to :data:`CHECKED_MINORS` only once that test
passes against it (and the tests of the modules that use each name, listed per name below).

Anything a public ``dagster`` export covers is imported from ``dagster`` instead (``DagsterEvent``,
``EventLogEntry``, ``DagsterEventType``, ``DataVersion``, ``multiple_process_executor_requirements``...).
"""

from __future__ import annotations

from dagster._core.asset_graph_view.asset_graph_view import (
    AssetGraphView,  # staleness.stale_resolver: the loading context of Dagster's own stale resolver
    TemporalContext,  # staleness.stale_resolver: "now, latest events" for that AssetGraphView
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationPlanned,  # planned_checks: a run's planned check, narrowed to one partition per stored row
    AssetCheckEvaluationTargetMaterializationData,  # pipeline: the shard materialization a check evaluation judged
)
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,  # provenance: the code-version tag a per-shard materialization carries
    DATA_VERSION_IS_USER_PROVIDED_TAG,  # registry: marks an input observation's data version as ours
    DATA_VERSION_TAG,  # registry/staleness/pipeline: the tag holding a record's data version
    DEFAULT_DATA_VERSION,  # staleness/pipeline: the version of a parent never observed ("INITIAL")
    NULL_EVENT_POINTER,  # provenance: the input event pointer when no parent record exists
    CachingStaleStatusResolver,  # staleness.stale_resolver: the UI's per-shard stale status (tests, benchmarks)
    StaleStatus,  # staleness.stale_keys: compares the resolver's answer with STALE
    compute_logical_data_version,  # staleness/provenance: the data version Dagster derives from code + inputs
    get_input_data_version_tag,  # provenance: the per-parent input data version tag name
    get_input_event_pointer_tag,  # provenance: the per-parent input event pointer tag name
)
from dagster._core.definitions.reconstruct import (
    ReconstructableRepository,  # cli: the task job, reconstructable in step processes, from the code location
)
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,  # factory: the type define_asset_job returns (an annotation)
)
from dagster._core.events import (
    AssetObservationData,  # event_batches: the payload of a batched runless observation
    JobFailureData,  # run_health: the failure record of a run whose process died
    RunFailureReason,  # run_health: UNEXPECTED_TERMINATION, so Dagster's run retries may retry it
    StepMaterializationData,  # event_batches: the payload of a batched runless materialization
)
from dagster._core.execution.retries import (
    RetryMode,  # gpu_executor: the executor's retries, from its config
    get_retries_config,  # gpu_executor: the "retries" field of the executor's config schema
)
from dagster._core.executor.step_delegating import (
    CheckStepHealthResult,  # gpu_executor: what GpuStepHandler.check_step_health returns
    StepDelegatingExecutor,  # gpu_executor: GpuExecutor's base (one process per step, health checks)
    StepHandler,  # gpu_executor: GpuStepHandler's base (launch, check, terminate a step process)
    StepHandlerContext,  # gpu_executor: what the StepHandler methods get (step args, tags, run)
)
from dagster._core.instance.utils import (
    RUNLESS_JOB_NAME,  # event_batches: the job name report_runless_asset_event stores
    RUNLESS_RUN_ID,  # event_batches: the run id report_runless_asset_event stores
)
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus,  # planned_checks: PLANNED, the status of a check execution's planned row
)
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,  # planned_checks: the planned check executions, one row per partition
    AssetKeyTable,  # sqlite_events: an asset's row, updated by each materialization (its latest)
)
from dagster._core.storage.event_log.sql_event_log import (
    SqlEventLogStorage,  # planned_checks: the base of the narrowed planned-check writer (sqlite and Postgres)
)
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,  # sqlite_events: the cross-run index's file, written in one transaction per batch
    SQLITE_BUSY_TIMEOUT_SECONDS,  # sqlite_events: the busy timeout of Dagster's own sqlite connections
    SqliteEventLogStorage,  # sqlite_events: PooledSqliteEventLogStorage's base; event_batches: its writers
)
from dagster._core.storage.sqlalchemy_compat import (
    db_result,  # event_batches/sqlite_events: an insert's result (its primary key), as store_event reads it
)

# The Dagster minors this module and its contract test were checked against.
CHECKED_MINORS = ("1.13",)

__all__ = [
    "CHECKED_MINORS",
    "CODE_VERSION_TAG",
    "DATA_VERSION_IS_USER_PROVIDED_TAG",
    "DATA_VERSION_TAG",
    "DEFAULT_DATA_VERSION",
    "INDEX_SHARD_NAME",
    "NULL_EVENT_POINTER",
    "RUNLESS_JOB_NAME",
    "RUNLESS_RUN_ID",
    "SQLITE_BUSY_TIMEOUT_SECONDS",
    "AssetCheckEvaluationPlanned",
    "AssetCheckEvaluationTargetMaterializationData",
    "AssetCheckExecutionRecordStatus",
    "AssetCheckExecutionsTable",
    "AssetKeyTable",
    "AssetGraphView",
    "AssetObservationData",
    "CachingStaleStatusResolver",
    "CheckStepHealthResult",
    "JobFailureData",
    "ReconstructableRepository",
    "RetryMode",
    "RunFailureReason",
    "SqlEventLogStorage",
    "SqliteEventLogStorage",
    "StaleStatus",
    "StepDelegatingExecutor",
    "StepHandler",
    "StepHandlerContext",
    "StepMaterializationData",
    "TemporalContext",
    "UnresolvedAssetJobDefinition",
    "compute_logical_data_version",
    "db_result",
    "get_input_data_version_tag",
    "get_input_event_pointer_tag",
    "get_retries_config",
]
