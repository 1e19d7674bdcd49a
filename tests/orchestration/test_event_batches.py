"""Batched runless asset events read back exactly like ``report_runless_asset_event`` writes them."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey, AssetObservation, DagsterEventType, DagsterInstance

from llm_infer_dagster.orchestration.dagster_internals import event_batches
from llm_infer_dagster.orchestration.dagster_internals.event_batches import report_runless_asset_events
from llm_infer_dagster.orchestration.dagster_internals.private import (
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
)


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DagsterInstance:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return DagsterInstance.get()


def _obs(key: AssetKey, partition: str, version: str) -> AssetObservation:
    return AssetObservation(
        asset_key=key,
        partition=partition,
        tags={DATA_VERSION_TAG: version, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"},
        metadata={"rows": 3},
    )


def test_batched_observations_match_single_writes(instance, monkeypatch):
    monkeypatch.setattr(event_batches, "BATCH", 7)  # several transactions, the last one partial
    single, batched = AssetKey(["t", "single"]), AssetKey(["t", "batched"])
    parts = [f"p{i:02d}" for i in range(20)]
    for p in parts:
        instance.report_runless_asset_event(_obs(single, p, f"v-{p}"))
    report_runless_asset_events(instance, [_obs(batched, p, f"v-{p}") for p in parts])

    for key in (single, batched):
        records = instance.fetch_observations(key, limit=100).records
        assert sorted(r.partition_key for r in records) == parts
        for p in parts:
            rec = instance.get_latest_data_version_record(key, True, p)
            assert rec is not None and rec.partition_key == p
            assert rec.asset_observation.data_version == f"v-{p}"
    one, many = (instance.get_asset_records([k])[0].asset_entry for k in (single, batched))
    assert (one.last_observation_record is None) == (many.last_observation_record is None)
    # The indexed tags Dagster's stale status queries by partition.
    tags = instance.event_log_storage.get_latest_tags_by_partition(
        batched, DagsterEventType.ASSET_OBSERVATION, [DATA_VERSION_TAG], parts
    )
    assert {p: t[DATA_VERSION_TAG] for p, t in tags.items()} == {p: f"v-{p}" for p in parts}


def test_a_later_batch_supersedes_an_earlier_one(instance):
    key = AssetKey(["t", "input"])
    report_runless_asset_events(instance, [_obs(key, "a", "1"), _obs(key, "b", "1")])
    report_runless_asset_events(instance, [_obs(key, "a", "2")])
    assert instance.get_latest_data_version_record(key, True, "a").asset_observation.data_version == "2"
    assert instance.get_latest_data_version_record(key, True, "b").asset_observation.data_version == "1"


def test_no_events_writes_nothing(instance):
    report_runless_asset_events(instance, [])
    assert instance.event_log_storage.get_maximum_record_id() in (None, 0)
