"""The shard manifest without Dagster: one read per new or changed file, stable ranges, nothing silently lost."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import polars as pl
import pytest
from counted_task import TASK, CountedTask

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.shards.manifest import (
    Registration,
    ShardManifest,
    delete_results_for_recut,
    manifest_for,
    plan_registration,
    save_manifest,
    unrecorded_digests,
)
from llm_infer_dagster.shards.sharding import DEFAULT_SHARD_SIZE, file_id
from llm_infer_dagster.shards.store import TaskStore, atomic_write_text
from llm_infer_dagster.shards.tables import ASSETS


class Env(CountedTask):
    def register(self, **kwargs: object) -> Registration:
        """What registration does with the files: plan, then save (Dagster's part is orchestration's)."""
        reg = plan_registration(
            self.task, self.store, str(self.input), default_size=self.task.settings.shard_size, **kwargs
        )
        save_manifest(self.store, reg.manifest)
        return reg

    def keys(self) -> list[str]:
        return list(manifest_for(self.store).shards)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def ranges(manifest: ShardManifest) -> dict[str, tuple[str, int, int]]:
    return {k: (Path(s.file).name, s.start, s.stop) for k, s in manifest.shards.items()}


def test_plan_registration_writes_nothing(env: Env) -> None:
    env.write("a.jsonl", 10)
    reg = plan_registration(env.task, env.store, str(env.input), shard_size=4)
    assert len(reg.manifest.shards) == 3 and reg.new_keys == list(reg.manifest.shards)
    assert not env.out.exists()


def test_a_saved_manifest_loads_back_the_same(env: Env) -> None:
    env.write("a.jsonl", 10)
    env.write("b.jsonl", 3)
    reg = env.register(shard_size=4)
    back = manifest_for(env.store)
    assert back == reg.manifest
    assert list(back.shards) == list(reg.manifest.shards)  # registration order is kept
    assert {e.rows for e in back.files.values()} == {10, 3}


def test_default_shard_size(env: Env) -> None:
    env.write("a.jsonl", 3)
    assert env.register().manifest.shard_size == DEFAULT_SHARD_SIZE


def test_same_size_rewrite_with_new_mtime_is_reread(env: Env) -> None:
    env.write("a.jsonl", 4)
    env.register(shard_size=4)
    env.reads_log.unlink()
    path = env.input / "a.jsonl"
    st = path.stat()
    path.write_text(path.read_text().replace("a.jsonl-0", "a.jsonl-9"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    reg = env.register(shard_size=4)
    assert reg.files_read == 1 and env.reads() == ["a.jsonl"]
    assert reg.new_keys == []


def test_shrunk_file_is_reported(env: Env) -> None:
    env.write("a.jsonl", 10)
    env.write("b.jsonl", 3)
    env.register(shard_size=4)
    env.write("a.jsonl", 2)
    reg = env.register(shard_size=4)
    assert [Path(p).name for p in reg.shrunk_files] == ["a.jsonl"]
    assert reg.new_keys == []
    # Shards are never silently re-cut: their ranges stay, and the shrink is reported for a person to decide.
    a_ranges = sorted((s.start, s.stop) for s in reg.manifest.shards.values() if s.file.endswith("a.jsonl"))
    assert a_ranges == [(0, 4), (4, 8), (8, 10)]


@pytest.mark.parametrize("tasks", [1, 3, 5, 13])
def test_tasks_picks_the_shard_size(env: Env, tasks: int) -> None:
    env.write("a.jsonl", 13)
    reg = env.register(tasks=tasks)
    assert reg.manifest.shard_size == math.ceil(13 / tasks)
    assert len(env.keys()) == math.ceil(13 / reg.manifest.shard_size) <= tasks


def test_tasks_counts_rows_over_all_files(env: Env) -> None:
    env.write("a.jsonl", 6)
    env.write("b.jsonl", 6)
    reg = env.register(tasks=4)
    assert reg.manifest.shard_size == 3
    assert len(env.keys()) == 4


def test_explicit_shard_size_wins_over_tasks(env: Env) -> None:
    env.write("a.jsonl", 12)
    assert env.register(shard_size=5, tasks=2).manifest.shard_size == 5


def test_later_call_with_other_size_keeps_old_size(env: Env) -> None:
    env.write("a.jsonl", 10)
    first = env.register(shard_size=4)
    keys = env.keys()
    reg = env.register(shard_size=2)
    assert reg.manifest.shard_size == 4
    assert reg.new_keys == [] and reg.files_read == 0
    assert env.keys() == keys
    assert ranges(reg.manifest) == ranges(first.manifest)
    assert reg.notes == [f"task {TASK} keeps its 4-row shards (asked for 2); re-cut them with --rerun"]
    assert env.register(tasks=10).manifest.shard_size == 4
    assert manifest_for(env.store).shard_size == 4


def test_a_recut_at_another_size_plans_new_shards_from_scratch(env: Env) -> None:
    env.write("a.jsonl", 10)
    env.register(shard_size=4)
    env.reads_log.unlink()
    reg = env.register(shard_size=3, recut=True)
    assert reg.resharded and reg.files_read == 1 and env.reads() == ["a.jsonl"]
    assert [r for r in ranges(reg.manifest).values()] == [
        ("a.jsonl", 0, 3),
        ("a.jsonl", 3, 6),
        ("a.jsonl", 6, 9),
        ("a.jsonl", 9, 10),
    ]
    assert not env.register(shard_size=3, recut=True).resharded  # the same size again: nothing to re-cut


def test_a_vanished_file_is_reported_once_and_its_shards_are_not_runnable(env: Env) -> None:
    env.write("a.jsonl", 4)
    env.write("b.jsonl", 4)
    env.register(shard_size=4)
    a_key, b_key = env.keys()
    (env.input / "b.jsonl").unlink()
    reg = env.register()
    assert [Path(p).name for p in reg.vanished_files] == ["b.jsonl"]
    assert reg.manifest.runnable(env.keys()) == [a_key]
    assert b_key in reg.manifest.shards  # its shard and results are kept, not silently deleted
    assert env.register().vanished_files == []  # reported once, not on every sensor tick


def test_shard_keys_read_as_file_and_chunk_and_survive_a_moved_input_folder(env: Env) -> None:
    env.write("part-1.jsonl", 5)
    env.write("part_1.jsonl", 2)  # slugs like part-1.jsonl: listed after it, it gets the hashed id
    env.register(shard_size=4)
    clash = file_id(TASK, "part_1.jsonl")
    assert env.keys() == ["part_1_jsonl-00000", "part_1_jsonl-00001", f"{clash}-00000"]
    moved = env.input.with_name("moved")
    env.input.rename(moved)
    env.input = moved
    env.write("part-1.jsonl", 9)  # grown after the move: the same file, its shards extended
    reg = env.register()
    assert reg.new_keys == ["part_1_jsonl-00002"] and reg.changed_keys == ["part_1_jsonl-00001"]
    assert [f.rel for f in reg.manifest.files.values()] == ["part-1.jsonl", "part_1.jsonl"]


def test_a_manifest_from_before_readable_ids_keeps_its_keys(env: Env) -> None:
    env.write("a.jsonl", 4)
    env.register(shard_size=2)
    m = manifest_for(env.store)
    legacy = file_id(TASK, "a.jsonl")
    # shards.json as written before readable ids: hashed file ids, no relative paths
    data = m.to_json()
    [entry] = [{k: v for k, v in vars(f).items() if k != "rel"} for f in m.files.values()]
    data["files"] = {legacy: {**entry, "file_id": legacy}}
    data["shards"] = [{**s.to_dict(), "file_id": legacy, "key": f"{legacy}-{s.chunk:05d}"} for s in m.shards.values()]
    env.store.manifest_path.write_text(json.dumps(data))
    env.write("a.jsonl", 5)
    env.write("b.jsonl", 1)
    reg = env.register()
    assert reg.new_keys == [f"{legacy}-00002", "b_jsonl-00000"]
    assert list(reg.manifest.files) == [legacy, "b_jsonl"]


def test_an_edited_row_changes_only_its_shards_digest(env: Env) -> None:
    env.write("a.jsonl", 10)
    first = env.register(shard_size=4)
    path = env.input / "a.jsonl"
    path.write_text(path.read_text().replace("a.jsonl-5", "a.jsonl-five"))  # row 5: the second shard
    reg = env.register()
    assert [Path(p).name for p in reg.modified_files] == ["a.jsonl"]
    assert list(reg.observed) == [env.keys()[1]]
    assert reg.observed[env.keys()[1]] != first.observed[env.keys()[1]]


def test_manifest_for_without_registration_says_what_to_do(env: Env) -> None:
    with pytest.raises(TaskConfigError, match="register_shards job first"):
        manifest_for(env.store)
    with pytest.raises(TaskConfigError, match="not in the manifest"):
        ShardManifest(task=TASK, shard_size=4).shard("nope-00000000-00000")


def test_edited_rows_in_a_shrunk_file_still_make_their_shard_stale(env: Env) -> None:
    env.write("a.jsonl", 10)
    first = env.register(shard_size=4)
    a0 = env.keys()[0]
    path = env.input / "a.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:6]).replace("a.jsonl-1", "a.jsonl-one"))
    reg = env.register()
    assert list(reg.observed) == [a0] and reg.observed[a0] != first.observed[a0]
    assert reg.short_keys == env.keys()[1:]


def test_trim_short_cuts_shrunk_shards_back_so_they_are_redone_and_a_regrown_file_is_covered(env: Env) -> None:
    env.write("a.jsonl", 10)
    env.register(shard_size=4)
    a0, a1, a2 = env.keys()
    env.write("a.jsonl", 5)
    env.register()  # kept, reported
    reg = env.register(trim_short=True)  # the explicit choice (--rerun)
    assert [(reg.manifest.shards[k].start, reg.manifest.shards[k].stop) for k in (a0, a1, a2)] == [
        (0, 4), (4, 5), (5, 5),
    ]  # fmt: skip
    assert reg.short_keys == [] and set(reg.observed) == {a1, a2}
    env.write("a.jsonl", 7)  # grows again: the last shard takes the new rows, none is left out
    grown = env.register()
    covered = sorted((s.start, s.stop) for s in grown.manifest.shards.values())
    assert covered == [(0, 4), (4, 5), (5, 7)]


def test_unrecorded_digests_are_the_shards_whose_digest_is_not_recorded(env: Env) -> None:
    env.write("a.jsonl", 10)
    manifest = env.register(shard_size=4).manifest
    a0, a1, a2 = manifest.shards
    digests = {k: s.digest for k, s in manifest.shards.items()}
    assert unrecorded_digests(manifest, {}) == digests
    assert unrecorded_digests(manifest, digests) == {}
    assert unrecorded_digests(manifest, {a0: digests[a0], a1: "older"}) == {a1: digests[a1], a2: digests[a2]}


def test_delete_results_for_recut_removes_the_tasks_results_and_nothing_else(env: Env) -> None:
    env.write("a.jsonl", 8)
    keys = env.register(shard_size=4).manifest.shards
    store = env.store
    frame = pl.DataFrame({"x": [1]})
    for key in keys:
        for asset in ASSETS:
            store.write_frame(asset, key, frame)
            store.write_frame(asset, key, frame, model="second")
        for kind in ("infer", "extract", "text"):
            store.result_path(kind, key).parent.mkdir(parents=True, exist_ok=True)
            store.result_path(kind, key).write_text("[]")
        store.log_shard(key, "done")
        atomic_write_text(store.marker_path(key), "")
    other = TaskStore(env.out, "other")  # another task under the same output dir
    other.write_frame("answers", next(iter(keys)), frame)

    delete_results_for_recut(store, keys)
    for key in keys:
        assert not any(store.result_path(kind, key).exists() for kind in ("infer", "extract", "text"))
        assert not store.shard_log_path(key).exists()
        assert not store.marker_path(key).exists()  # a seed script must not see "done" for a shard with no results
    assert sorted(p.name for p in store.task_dir.iterdir() if not p.name.startswith(".")) == ["shards.json"]
    assert manifest_for(store).shards == keys  # the manifest stays: save_manifest rewrites it after a re-cut
    assert other.has("answers", next(iter(keys)))
