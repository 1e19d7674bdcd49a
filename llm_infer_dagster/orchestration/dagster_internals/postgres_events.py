"""Dagster's PostgreSQL event log, a run's planned check rows narrowed to one partition each (``planned_checks``).

Stock ``PostgresEventLogStorage`` writes, for each partitioned check of a run over n shards, n rows each holding
the run's whole n-key partition list. This subclass writes the same rows, each naming its own partition; every
other write and read is Dagster's. It needs the ``postgres`` extra, and naming the event log on its own in
``dagster.yaml`` (Dagster refuses a ``storage: postgres`` block beside it): ``postgres_instance_yaml`` writes
the three blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster_postgres import PostgresEventLogStorage

from llm_infer_dagster.orchestration.dagster_internals.planned_checks import NarrowedPlannedChecks


class NarrowedPostgresEventLogStorage(NarrowedPlannedChecks, PostgresEventLogStorage):
    """``PostgresEventLogStorage`` writing each planned check row with its own partition only."""

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: Any, config_value: Mapping[str, Any]
    ) -> NarrowedPostgresEventLogStorage:
        stock = PostgresEventLogStorage.from_config_value(inst_data, config_value)  # parses the config Dagster's way
        return cls(
            inst_data=inst_data,
            postgres_url=stock.postgres_url,
            should_autocreate_tables=stock.should_autocreate_tables,
            token_provider=stock._token_provider,  # noqa: SLF001 - passed through as the stock one got it
        )


def postgres_instance_yaml(postgres_url: str) -> str:
    """A ``dagster.yaml`` with runs, events and schedules in the database at ``postgres_url``, the event log
    this module's (what ``storage: postgres: postgres_url: ...`` gives, but for that class)."""
    url = f'    postgres_url: "{postgres_url}"\n'
    return (
        "run_storage:\n  module: dagster_postgres.run_storage\n  class: PostgresRunStorage\n  config:\n"
        + url
        + f"event_log_storage:\n  module: {__name__}\n  class: {NarrowedPostgresEventLogStorage.__name__}\n"
        "  config:\n"
        + url
        + "schedule_storage:\n  module: dagster_postgres.schedule_storage\n  class: PostgresScheduleStorage\n"
        "  config:\n" + url + "telemetry:\n  enabled: false\n"
    )
