"""The contract of ``orchestration/dagster_internals/private.py``: what we rely on in each private Dagster name.

Dagster's ``dagster._...`` modules can change in any minor release. Every private name the package uses is
re-exported by ``dagster_private`` and has one check here (``CONTRACTS``): the parameters we pass, the
attributes and methods we read or override, the values already stored in users' event logs. The behaviour
behind them is tested with the module that uses each name (``test_staleness``, ``test_event_batches``,
``test_sqlite_events``, ``test_gpu_executor``, ``test_run_health``...); these checks only say, cheaply and
by name, what moved.
"""

from __future__ import annotations

import ast
import inspect
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster
import pytest
import sqlalchemy
from dagster import AssetKey, AssetMaterialization, AssetObservation, AssetSelection, DataVersion, define_asset_job

from llm_infer_dagster.orchestration.dagster_internals import private as dp

PACKAGE = Path(dp.__file__).resolve().parents[2]  # llm_infer_dagster/

# Package files (relative to llm_infer_dagster/) that still import ``dagster._...`` themselves.
ALLOWED_OFFENDERS: set[str] = set()  # files allowed a private import of their own: none


def test_installed_dagster_minor_is_one_dagster_private_was_checked_against() -> None:
    minor = ".".join(dagster.__version__.split(".")[:2])
    assert minor in dp.CHECKED_MINORS, (
        f"Dagster {dagster.__version__} is installed, but orchestration/dagster_internals/private.py was checked "
        f"against {', '.join(dp.CHECKED_MINORS)} only. Re-check it for {minor}: make every check in "
        "tests/orchestration/test_dagster_private.py pass (fix the import or the caller of each name that moved), "
        "run the tests of the modules named in private.py's comments, then add "
        f'"{minor}" to CHECKED_MINORS and move the dagster pins in pyproject.toml.'
    )


def _params(fn: Callable[..., Any]) -> set[str]:
    return set(inspect.signature(fn).parameters)


def _takes(fn: Callable[..., Any], *names: str) -> None:
    missing = set(names) - _params(fn)
    assert not missing, f"{fn.__qualname__} no longer takes {sorted(missing)}: {inspect.signature(fn)}"


def _has(cls: type, *names: str) -> None:
    missing = [n for n in names if not hasattr(cls, n)]
    assert not missing, f"{cls.__qualname__} has no {missing}"


# --- data versions and provenance tags. Their values are stored in users' event logs: a renamed tag makes
# every record unreadable to staleness, a changed hash makes every finished shard stale (all redone).


def _data_version_tags() -> None:
    assert dp.DATA_VERSION_TAG == "dagster/data_version"
    assert dp.DATA_VERSION_IS_USER_PROVIDED_TAG == "dagster/data_version_is_user_provided"
    assert dp.CODE_VERSION_TAG == "dagster/code_version"
    assert dp.NULL_EVENT_POINTER == "NULL"
    assert DataVersion("INITIAL") == dp.DEFAULT_DATA_VERSION
    key = AssetKey(["t", "raw"])
    assert dp.get_input_data_version_tag(key) == "dagster/input_data_version/t/raw"
    assert dp.get_input_event_pointer_tag(key) == "dagster/input_event_pointer/t/raw"


def _compute_logical_data_version() -> None:
    inputs = {AssetKey(["t", "input"]): DataVersion("abc")}
    version = dp.compute_logical_data_version("v1", inputs)
    assert isinstance(version, DataVersion)
    # Pinned: a new hash would make every shard recorded before the upgrade stale.
    assert version.value == "300c7a2d68d07130807aeb7c7146ec30f946f582720b9cc7fd694e0708d5f02e"
    assert dp.compute_logical_data_version("v2", inputs) != version


def _stale_resolver() -> None:
    _takes(dp.CachingStaleStatusResolver.__init__, "instance", "asset_graph", "loading_context")
    _takes(dp.CachingStaleStatusResolver.get_status, "key", "partition_key")
    assert {s.name for s in dp.StaleStatus} >= {"STALE", "FRESH", "MISSING"}
    _takes(dp.AssetGraphView.__init__, "temporal_context", "instance", "asset_graph")
    context = dp.TemporalContext(effective_dt=datetime.now(UTC), last_event_id=None)
    assert context.last_event_id is None and context.effective_dt.tzinfo is not None


# --- asset checks


def _check_target_materialization() -> None:
    # The UI shows a shard's check only while it targets the shard's latest materialization (its storage id).
    target = dp.AssetCheckEvaluationTargetMaterializationData(storage_id=7, run_id="r", timestamp=1.0)
    assert (target.storage_id, target.run_id, target.timestamp) == (7, "r", 1.0)
    _takes(dagster.AssetCheckEvaluation, "target_materialization_data", "partition", "blocking", "severity")


def _planned_check_rows() -> None:
    # planned_checks writes a run's planned check rows itself (one partition per row), as Dagster's writer does,
    # for the pooled sqlite log and the Postgres one (both SqlEventLogStorage, which calls it per planned event).
    planned = dp.AssetCheckEvaluationPlanned(asset_key=dagster.AssetKey("a"), check_name="c", partitions_subset=None)
    assert (planned.asset_key, planned.check_name, planned.partitions_subset) == (dagster.AssetKey("a"), "c", None)
    assert dp.AssetCheckExecutionRecordStatus.PLANNED.value == "PLANNED"
    columns = set(dp.AssetCheckExecutionsTable.c.keys())
    assert columns >= {"asset_key", "check_name", "partition", "run_id", "execution_status", "evaluation_event",
                       "evaluation_event_timestamp", "evaluation_event_storage_id"}  # fmt: skip
    storage = dp.SqlEventLogStorage
    assert issubclass(dp.SqliteEventLogStorage, storage)
    _takes(storage._store_asset_check_evaluation_planned, "event", "event_id")  # noqa: SLF001
    _takes(storage._event_insert_timestamp, "event")  # noqa: SLF001
    _has(storage, "index_connection")
    assert "_store_asset_check_evaluation_planned" in inspect.getsource(storage.store_asset_check_event)


# --- jobs and code locations


def _reconstructable_repository() -> None:
    _takes(dp.ReconstructableRepository.for_module, "module", "fn_name", "working_directory")
    _takes(dp.ReconstructableRepository.get_reconstructable_job, "name")


def _unresolved_asset_job_definition() -> None:
    job = define_asset_job("contract_job", selection=AssetSelection.assets(AssetKey(["t", "raw"])))
    assert isinstance(job, dp.UnresolvedAssetJobDefinition)


# --- run failures


def _job_failure_data() -> None:
    failure = dp.JobFailureData(error=None, failure_reason=dp.RunFailureReason.UNEXPECTED_TERMINATION)
    assert failure.failure_reason is dp.RunFailureReason.UNEXPECTED_TERMINATION
    _takes(dagster.DagsterInstance.report_run_failed, "dagster_run", "message", "job_failure_data")
    _takes(dagster.DagsterInstance.report_run_canceled, "dagster_run", "message")


# --- the GPU executor


def _step_delegating_executor() -> None:
    _takes(
        dp.StepDelegatingExecutor.__init__,
        "step_handler",
        "retries",
        "max_concurrent",
        "sleep_seconds",
        "check_step_health_interval_seconds",
    )
    # GpuExecutor.execute overrides this and reads plan_context.dagster_run / .instance and the plan's steps.
    hints = typing.get_type_hints(dp.StepDelegatingExecutor.execute)
    assert set(hints) >= {"plan_context", "execution_plan"}, hints
    _has(hints["plan_context"], "dagster_run", "instance")
    _has(hints["execution_plan"], "get_steps_to_execute_in_topo_order")
    # GpuExecutor._pop_events wraps the instance: its tail of the run's events reads them through this call.
    _takes(dp.StepDelegatingExecutor._pop_events, "instance", "run_id", "seen_storage_ids")  # noqa: SLF001
    source = inspect.getsource(dp.StepDelegatingExecutor._pop_events)  # noqa: SLF001
    assert "instance.get_records_for_run(" in source and "of_type=" in source, source


def _asset_key_table() -> None:
    # PooledSqliteEventLogStorage._store_asset_event: update the asset's row by its key, else insert it.
    assert {"asset_key", "last_materialization", "last_run_id"} <= set(dp.AssetKeyTable.c.keys())


def _step_handler() -> None:
    # GpuStepHandler implements exactly these; one more abstract method and it cannot be built.
    assert dp.StepHandler.__abstractmethods__ == {"name", "launch_step", "check_step_health", "terminate_step"}
    for method in (dp.StepHandler.launch_step, dp.StepHandler.check_step_health, dp.StepHandler.terminate_step):
        assert list(inspect.signature(method).parameters) == ["self", "step_handler_context"], method
    _takes(dagster.DagsterEvent.step_worker_starting, "step_context", "message", "metadata")


def _step_handler_context() -> None:
    _has(dp.StepHandlerContext, "execute_step_args", "step_tags", "dagster_run", "get_step_context")
    step_args = typing.get_type_hints(dp.StepHandlerContext.__init__)["execute_step_args"]
    _has(step_args, "step_keys_to_execute", "run_id", "get_command_args")


def _check_step_health_result() -> None:
    assert dp.CheckStepHealthResult.healthy().is_healthy is True
    unhealthy = dp.CheckStepHealthResult.unhealthy("step process 1 exited with code 9")
    assert unhealthy.is_healthy is False and unhealthy.unhealthy_reason == "step process 1 exited with code 9"


def _retries() -> None:
    field = dp.get_retries_config()
    assert isinstance(field, dagster.Field) and field.default_value == {"enabled": {}}
    assert dp.RetryMode.from_config(field.default_value) == dp.RetryMode.ENABLED
    assert dp.RetryMode.from_config({"disabled": {}}) == dp.RetryMode.DISABLED


# --- batched event writes and the pooled sqlite event log


def _event_data() -> None:
    observation = AssetObservation(asset_key=AssetKey(["t", "input"]), partition="p")
    assert dp.AssetObservationData(observation).asset_observation == observation
    materialization = AssetMaterialization(asset_key=AssetKey(["t", "raw"]), partition="p")
    assert dp.StepMaterializationData(materialization).materialization == materialization
    _takes(dagster.DagsterEvent, "event_type_value", "event_specific_data", "job_name")
    _takes(dagster.EventLogEntry, "user_message", "level", "job_name", "run_id", "error_info", "timestamp")


def _runless_ids() -> None:
    # What report_runless_asset_event stores; batched writes store the same, so both read back alike.
    assert (dp.RUNLESS_RUN_ID, dp.RUNLESS_JOB_NAME) == ("", "")


def _sqlite_event_log_storage() -> None:
    storage = dp.SqliteEventLogStorage
    _takes(storage.__init__, "base_dir", "inst_data")
    _takes(storage.from_config_value, "inst_data", "config_value")
    _takes(storage.conn_string_for_shard, "shard_name")
    _takes(storage._initdb, "engine")  # noqa: SLF001
    _takes(storage._connect, "shard")  # noqa: SLF001
    _takes(storage._has_asset_key_index_cols_on_connection, "conn")  # noqa: SLF001
    _takes(storage.has_table, "table_name")
    _takes(storage.delete_events, "run_id")
    _has(storage, "wipe", "dispose", "store_event", "store_event_batch")
    # event_batches' sqlite writer
    _takes(storage.run_connection, "run_id")
    _has(storage, "index_transaction")
    _takes(storage.prepare_insert_event, "event")
    _takes(storage._store_asset_event_tags, "conn", "events", "event_ids")  # noqa: SLF001
    _takes(storage._store_asset_event, "conn", "event", "event_id")  # noqa: SLF001
    # PooledSqliteEventLogStorage._store_asset_event writes the asset's row itself from these values.
    _takes(storage._get_asset_entry_values, "event", "event_id", "has_asset_key_index_cols")  # noqa: SLF001
    # sqlite_events' batch writer: one index transaction that Dagster's check-row writers join (their own
    # index_connection, which is _connect on this shard)
    _takes(storage.store_asset_check_event, "event", "event_id")
    assert dp.INDEX_SHARD_NAME == "index" and "INDEX_SHARD_NAME" in inspect.getsource(storage.index_connection)
    assert isinstance(dp.SQLITE_BUSY_TIMEOUT_SECONDS, int | float) and dp.SQLITE_BUSY_TIMEOUT_SECONDS > 0


def _db_result() -> None:
    _takes(dp.db_result, "conn", "query")


CONTRACTS: dict[str, Callable[[], None]] = {
    "AssetCheckEvaluationPlanned": _planned_check_rows,
    "AssetCheckEvaluationTargetMaterializationData": _check_target_materialization,
    "AssetCheckExecutionRecordStatus": _planned_check_rows,
    "AssetCheckExecutionsTable": _planned_check_rows,
    "AssetGraphView": _stale_resolver,
    "AssetObservationData": _event_data,
    "CODE_VERSION_TAG": _data_version_tags,
    "CachingStaleStatusResolver": _stale_resolver,
    "CheckStepHealthResult": _check_step_health_result,
    "DATA_VERSION_IS_USER_PROVIDED_TAG": _data_version_tags,
    "DATA_VERSION_TAG": _data_version_tags,
    "AssetKeyTable": _asset_key_table,
    "DEFAULT_DATA_VERSION": _data_version_tags,
    "JobFailureData": _job_failure_data,
    "NULL_EVENT_POINTER": _data_version_tags,
    "RUNLESS_JOB_NAME": _runless_ids,
    "RUNLESS_RUN_ID": _runless_ids,
    "ReconstructableRepository": _reconstructable_repository,
    "RetryMode": _retries,
    "RunFailureReason": _job_failure_data,
    "INDEX_SHARD_NAME": _sqlite_event_log_storage,
    "SQLITE_BUSY_TIMEOUT_SECONDS": _sqlite_event_log_storage,
    "SqlEventLogStorage": _planned_check_rows,
    "SqliteEventLogStorage": _sqlite_event_log_storage,
    "StaleStatus": _stale_resolver,
    "StepDelegatingExecutor": _step_delegating_executor,
    "StepHandler": _step_handler,
    "StepHandlerContext": _step_handler_context,
    "StepMaterializationData": _event_data,
    "TemporalContext": _stale_resolver,
    "UnresolvedAssetJobDefinition": _unresolved_asset_job_definition,
    "compute_logical_data_version": _compute_logical_data_version,
    "db_result": _db_result,
    "get_input_data_version_tag": _data_version_tags,
    "get_input_event_pointer_tag": _data_version_tags,
    "get_retries_config": _retries,
}


def test_every_reexported_name_has_a_contract_check() -> None:
    exported = set(dp.__all__) - {"CHECKED_MINORS"}
    assert exported == set(CONTRACTS), (
        f"without a check here: {sorted(exported - set(CONTRACTS))}; "
        f"no longer exported: {sorted(set(CONTRACTS) - exported)}"
    )
    for name in exported:
        value = getattr(dp, name)
        module = getattr(value, "__module__", None)
        # (a Dagster table is a sqlalchemy object: its class's module is sqlalchemy's)
        if module is not None and not isinstance(value, str | int | float | DataVersion | sqlalchemy.Table):
            assert module.startswith("dagster"), f"{name} comes from {module}, not Dagster"


@pytest.mark.parametrize("check", sorted(set(CONTRACTS.values()), key=lambda f: f.__name__), ids=lambda f: f.__name__)
def test_what_we_rely_on_is_still_there(check: Callable[[], None]) -> None:
    check()


def test_sqlite_connections_all_go_through_connect(tmp_path: Path) -> None:
    """PooledSqliteEventLogStorage pools by overriding ``_connect``: every run and index write must use it."""
    from llm_infer_dagster.orchestration.dagster_internals.event_batches import runless_entry

    shards: list[str] = []

    class Recording(dp.SqliteEventLogStorage):
        @contextmanager
        def _connect(self, shard: str) -> Iterator[Any]:
            shards.append(shard)
            with super()._connect(shard) as conn:
                yield conn

    storage = Recording(str(tmp_path))
    assert isinstance(storage._initialized_dbs, set)  # noqa: SLF001 - the pooled storage records its shards there
    assert hasattr(storage, "_db_lock")
    shards.clear()
    storage.store_event(runless_entry(AssetObservation(asset_key=AssetKey(["t", "input"]), partition="p")))
    storage.dispose()
    assert dp.RUNLESS_RUN_ID in shards and "index" in shards, shards


def _private_dagster_imports(path: Path) -> list[int]:
    """Line numbers of the import statements in ``path`` that name a ``dagster._...`` module."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            if node.module == "dagster":  # from dagster import _core
                modules += [f"dagster.{alias.name}" for alias in node.names]
        else:
            continue
        if any(m.startswith("dagster._") for m in modules):
            lines.append(node.lineno)
    return lines


def _offenders() -> dict[str, list[int]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel != "orchestration/dagster_internals/private.py" and (lines := _private_dagster_imports(path)):
            found[rel] = lines
    return found


def test_only_dagster_private_imports_private_dagster_names() -> None:
    new = {rel: lines for rel, lines in _offenders().items() if rel not in ALLOWED_OFFENDERS}
    assert not new, (
        f"private Dagster imports outside orchestration/dagster_internals/private.py (file: lines): {new}. Import the "
        "name from llm_infer_dagster.orchestration.dagster_internals.private (add it there, with its comment and a "
        "check in CONTRACTS here), or use a public dagster export."
    )


def test_allowed_offenders_still_offend() -> None:
    cleaned = ALLOWED_OFFENDERS - set(_offenders())
    assert not cleaned, f"no private Dagster imports left in {sorted(cleaned)}: remove them from ALLOWED_OFFENDERS"
