"""Shard registration against a real Dagster instance: partitions, input observations, the re-cut's wipe.

The manifest itself (reads, ranges, digests, no Dagster) is tested in ``tests/shards/test_manifest.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from counted_task import CountedTask
from dagster import AssetKey, AssetMaterialization, DagsterInstance

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.orchestration.registry import (
    partitions_def_for,
    recorded_input_versions,
    register_shards,
    registered_keys,
    sync_manifest,
)
from llm_infer_dagster.shards.manifest import Registration, ShardManifest, manifest_for
from llm_infer_dagster.shards.sharding import is_shard_key
from llm_infer_dagster.shards.tables import ASSETS


class Env(CountedTask):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.instance = DagsterInstance.ephemeral()

    def register(self, **kwargs) -> Registration:
        return register_shards(self.instance, self.task, self.store, str(self.input), **kwargs)

    def keys(self) -> list[str]:
        return registered_keys(self.instance, self.task)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def ranges(manifest: ShardManifest) -> dict[str, tuple[str, int, int]]:
    return {k: (Path(s.file).name, s.start, s.stop) for k, s in manifest.shards.items()}


def test_first_registration_adds_dynamic_partitions_and_manifest(env: Env) -> None:
    env.write("a.jsonl", 10)
    env.write("b.jsonl", 3)
    reg = env.register(shard_size=4)
    assert reg.files_read == 2
    assert sorted(env.reads()) == ["a.jsonl", "b.jsonl"]
    assert reg.manifest.shard_size == 4
    keys = env.keys()
    assert keys == list(reg.manifest.shards) == reg.new_keys
    assert len(keys) == 3 + 1
    assert all(is_shard_key(k) for k in keys)
    assert [r for r in ranges(reg.manifest).values()] == [
        ("a.jsonl", 0, 4),
        ("a.jsonl", 4, 8),
        ("a.jsonl", 8, 10),
        ("b.jsonl", 0, 3),
    ]
    # The partitions definition name is what the assets use.
    assert env.instance.get_dynamic_partitions(partitions_def_for(env.task).name) == keys
    # The manifest on disk holds the same shards.
    on_disk = manifest_for(env.store)
    assert ranges(on_disk) == ranges(reg.manifest)
    assert {e.rows for e in on_disk.files.values()} == {10, 3}


def test_second_call_reads_nothing_and_adds_nothing(env: Env) -> None:
    env.write("a.jsonl", 10)
    env.write("b.jsonl", 3)
    first = env.register(shard_size=4)
    keys = env.keys()
    manifest_text = env.store.manifest_path.read_text()
    reads = env.reads()

    again = env.register(shard_size=4)
    assert again.files_read == 0
    assert again.new_keys == []
    assert again.shrunk_files == []
    assert env.reads() == reads
    assert env.keys() == keys
    assert ranges(again.manifest) == ranges(first.manifest)
    assert json.loads(env.store.manifest_path.read_text()) == json.loads(manifest_text)


def test_adding_a_file_reads_only_it_and_adds_only_its_shards(env: Env) -> None:
    env.write("b.jsonl", 10)
    first = env.register(shard_size=4)
    old_keys = env.keys()
    env.reads_log.unlink()

    env.write("a.jsonl", 5)  # sorts before b: must not shift b's keys
    reg = env.register(shard_size=4)
    assert reg.files_read == 1
    assert env.reads() == ["a.jsonl"]
    assert len(reg.new_keys) == 2
    assert all(reg.manifest.shards[k].file.endswith("a.jsonl") for k in reg.new_keys)
    assert env.keys() == old_keys + reg.new_keys  # old partitions keep their place
    for k in old_keys:
        assert reg.manifest.shards[k] == first.manifest.shards[k]


def test_growing_a_file_rereads_only_it(env: Env) -> None:
    env.write("a.jsonl", 10)
    env.write("b.jsonl", 3)
    first = env.register(shard_size=4)
    old_keys = env.keys()
    env.reads_log.unlink()

    env.write("a.jsonl", 7, start=10, append=True)  # 17 rows now
    reg = env.register(shard_size=4)
    assert reg.files_read == 1
    assert env.reads() == ["a.jsonl"]
    assert reg.shrunk_files == []
    assert len(reg.new_keys) == 2
    assert env.keys() == old_keys + reg.new_keys
    before, after = ranges(first.manifest), ranges(reg.manifest)
    changed = [k for k in before if before[k] != after[k]]
    assert changed == [old_keys[2]]
    assert after[old_keys[2]] == ("a.jsonl", 8, 12)
    assert [after[k] for k in reg.new_keys] == [("a.jsonl", 12, 16), ("a.jsonl", 16, 17)]
    assert manifest_for(env.store).files[first.manifest.shards[old_keys[0]].file_id].rows == 17


def test_recut_at_another_size_wipes_and_reregisters(env: Env) -> None:
    env.write("a.jsonl", 10)
    env.write("b.jsonl", 3)
    env.register(shard_size=4)
    old_keys = env.keys()
    for asset in ASSETS:
        env.store.write_frame(asset, old_keys[0], pl.DataFrame({"x": [1]}))
        env.instance.report_runless_asset_event(
            AssetMaterialization(asset_key=AssetKey([env.task.dagster_name, asset]), partition=old_keys[0])
        )
    seed_result = env.store.result_path("extract", old_keys[0])
    seed_result.parent.mkdir(parents=True)
    seed_result.write_text("[]")
    comp = AssetKey([env.task.dagster_name, "completions"])
    assert env.instance.get_materialized_partitions(comp) == {old_keys[0]}
    env.reads_log.unlink()

    reg = env.register(shard_size=3, recut=True)
    assert reg.resharded and reg.manifest.shard_size == 3
    assert reg.files_read == 2 and sorted(env.reads()) == ["a.jsonl", "b.jsonl"]
    assert env.keys() == list(reg.manifest.shards) == reg.new_keys
    assert len(env.keys()) == 4 + 1
    assert [r for r in ranges(reg.manifest).values()][:4] == [
        ("a.jsonl", 0, 3),
        ("a.jsonl", 3, 6),
        ("a.jsonl", 6, 9),
        ("a.jsonl", 9, 10),
    ]
    assert env.instance.get_materialized_partitions(comp) == set()
    for asset in ASSETS:
        assert not (env.store.task_dir / asset).exists()
    assert not seed_result.exists()  # the seed layout holds no result of a key that now names other rows
    assert manifest_for(env.store).shard_size == 3
    # A plain call afterwards keeps the new size and reads nothing.
    again = env.register()
    assert again.files_read == 0 and again.manifest.shard_size == 3 and not again.resharded


def test_recut_at_the_same_size_keeps_every_finished_shard(env: Env) -> None:
    """--rerun without a new size redoes shards one by one; nothing is wiped up front (a crash loses nothing)."""
    env.write("a.jsonl", 10)
    env.register(shard_size=4)
    keys = env.keys()
    comp = AssetKey([env.task.dagster_name, "completions"])
    env.store.write_frame("completions", keys[0], pl.DataFrame({"x": [1]}))
    env.instance.report_runless_asset_event(AssetMaterialization(asset_key=comp, partition=keys[0]))
    reg = env.register(recut=True)
    assert not reg.resharded and reg.new_keys == [] and reg.observed == {}
    assert env.keys() == keys
    assert env.instance.get_materialized_partitions(comp) == {keys[0]}
    assert env.store.has("completions", keys[0])


def test_a_grown_file_fills_its_last_shard_and_only_that_shard_gets_a_new_input_version(env: Env) -> None:
    """Appended rows fill the partial last shard (same key, new digest) before new shards start."""
    env.write("a.jsonl", 10)
    env.write("b.jsonl", 3)
    first = env.register(shard_size=4)
    assert set(first.observed) == set(env.keys())  # every new shard is observed with its rows' digest
    keys = env.keys()
    last_a = keys[2]
    env.write("a.jsonl", 3, start=10, append=True)
    reg = env.register()
    assert (reg.manifest.shards[last_a].start, reg.manifest.shards[last_a].stop) == (8, 12)
    assert reg.changed_keys == [last_a]
    assert [(reg.manifest.shards[k].start, reg.manifest.shards[k].stop) for k in reg.new_keys] == [(12, 13)]
    assert set(reg.observed) == {last_a, *reg.new_keys}
    assert reg.observed[last_a] != first.observed[last_a]
    latest = _latest_input_versions(env)
    assert latest[last_a] == reg.observed[last_a] and latest[keys[0]] == first.observed[keys[0]]


def test_no_files_is_an_error(env: Env) -> None:
    with pytest.raises(TaskConfigError, match="returned no files"):
        env.register()
    assert env.keys() == []
    assert not env.store.manifest_path.exists()


def test_bad_row_in_a_file_registers_nothing(env: Env) -> None:
    env.write("a.jsonl", 3)
    (env.input / "b.jsonl").write_text('{"q": 1}\n[1, 2]\n')
    with pytest.raises(TaskConfigError, match="at row 1"):
        env.register()
    assert env.keys() == []
    assert not env.store.manifest_path.exists()


def _latest_input_versions(env: Env) -> dict[str, str]:
    records = env.instance.fetch_observations(AssetKey([env.task.dagster_name, "input"]), limit=1000).records
    return {
        r.asset_observation.partition: r.asset_observation.tags["dagster/data_version"]
        for r in sorted(records, key=lambda r: r.storage_id)
    }


def test_a_truncated_file_keeps_its_finished_shards(env: Env) -> None:
    """Issue 13: rows that vanished never turn finished shards into empty ones; they are reported and kept."""
    env.write("a.jsonl", 10)
    env.write("b.jsonl", 3)
    first = env.register(shard_size=4)
    a0, a1, a2, b0 = env.keys()
    env.write("a.jsonl", 5)  # truncated: rows 0-4 are still there, 5-9 are gone
    reg = env.register()
    assert reg.short_keys == [a1, a2]
    assert reg.observed == {}  # a0's rows are unchanged; a1 and a2 keep the digests of the rows they were made from
    assert {k: reg.manifest.shards[k].digest for k in (a1, a2)} == {k: first.observed[k] for k in (a1, a2)}
    assert reg.manifest.runnable(env.keys()) == [a0, b0]
    assert reg.manifest.runnable(env.keys(), include_short=True) == [a0, a1, a2, b0]
    assert _latest_input_versions(env) == first.observed  # Dagster sees no change: nothing is stale
    assert reg.manifest.sharded_rows(reg.manifest.shards[a0].file_id) == 10


def test_an_emptied_file_keeps_every_shard_and_a_restored_file_is_unchanged(env: Env) -> None:
    env.write("a.jsonl", 10)
    first = env.register(shard_size=4)
    (env.input / "a.jsonl").write_text("")  # `> a.jsonl`, a failed sync
    emptied = env.register()
    assert emptied.short_keys == env.keys() and emptied.manifest.runnable(env.keys()) == []
    assert emptied.observed == {}
    env.write("a.jsonl", 10)  # the same rows are back
    restored = env.register()
    assert restored.short_keys == [] and restored.observed == {} and restored.new_keys == []
    assert restored.manifest.runnable(env.keys()) == env.keys()
    assert _latest_input_versions(env) == first.observed


def test_a_registration_killed_before_dagster_recorded_it_is_completed_by_the_next(env: Env) -> None:
    """Issue 13: shards.json saved, then killed before partitions and observations: the resume records both."""
    env.write("a.jsonl", 10)
    sync_manifest(env.instance, env.task, env.store, str(env.input), shard_size=4)  # saves the manifest only
    assert env.keys() == [] and _latest_input_versions(env) == {}
    reg = env.register()
    assert len(env.keys()) == 3
    assert _latest_input_versions(env) == {k: s.digest for k, s in reg.manifest.shards.items()}
    # and an edit made after that is still seen as one
    path = env.input / "a.jsonl"
    path.write_text(path.read_text().replace("a.jsonl-5", "a.jsonl-five"))
    edited = env.register()
    assert list(edited.observed) == [env.keys()[1]]


def test_each_recorded_shard_is_an_input_observation_and_a_materialization(env: Env) -> None:
    """The observation holds the data version (Dagster's staleness reads it); the materialization makes the UI
    read the input as there (Materialized, ``100% filled``)."""
    env.write("a.jsonl", 6)
    first = env.register(shard_size=4)
    key = AssetKey([env.task.dagster_name, "input"])
    assert env.instance.get_materialized_partitions(key) == set(env.keys())
    assert recorded_input_versions(env.instance, key, [*env.keys(), "never"]) == first.observed
    env.write("a.jsonl", 1, start=6, append=True)
    grown = env.register()
    mats = env.instance.fetch_materializations(key, limit=100).records
    assert sorted(r.partition_key or "" for r in mats) == sorted([*env.keys(), *grown.observed])
    assert all(not (r.asset_materialization and r.asset_materialization.tags) for r in mats)  # no data version
