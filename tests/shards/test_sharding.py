"""Pure sharding: stable keys, row ranges that cover every row once, --tasks N, and run ranges."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llm_infer_dagster.shards.sharding import (
    assign_file_ids,
    contiguous_ranges,
    file_id,
    is_shard_key,
    plan_file_shards,
    plan_shards,
    readable_file_id,
    relative_name,
    shard_key,
    shard_size_for_tasks,
)


def ranges(shards) -> dict[str, tuple[int, int]]:
    return {s.key: (s.start, s.stop) for s in shards}


def triples(task: str, files: dict[str, int]) -> list[tuple[str, str, int]]:
    return [(f"/in/{name}", file_id(task, name), rows) for name, rows in files.items()]


# --------------------------------------------------------------------------------------------- stability


def test_adding_a_file_keeps_old_keys_and_ranges() -> None:
    before = plan_shards(triples("t", {"a.jsonl": 10, "b.jsonl": 7}), 4)
    after = plan_shards(triples("t", {"a.jsonl": 10, "0_first.jsonl": 5, "b.jsonl": 7}), 4)
    old, new = ranges(before), ranges(after)
    assert len(old) == 3 + 2
    for key, rng in old.items():
        assert new[key] == rng
    added = set(new) - set(old)
    assert len(added) == 2
    assert all(k.startswith("0_first_jsonl-") for k in added)


def test_growing_a_file_changes_only_its_last_shard_and_adds_new() -> None:
    before = ranges(plan_shards(triples("t", {"a.jsonl": 10, "b.jsonl": 7}), 4))
    after = ranges(plan_shards(triples("t", {"a.jsonl": 17, "b.jsonl": 7}), 4))
    fid_a = file_id("t", "a.jsonl")
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {shard_key(fid_a, 2)}
    assert before[shard_key(fid_a, 2)] == (8, 10)
    assert after[shard_key(fid_a, 2)] == (8, 12)
    assert set(after) - set(before) == {shard_key(fid_a, 3), shard_key(fid_a, 4)}
    assert after[shard_key(fid_a, 4)] == (16, 17)


def test_growing_a_file_on_a_shard_boundary_changes_no_range() -> None:
    before = ranges(plan_file_shards("/in/a", "a-00000000", 8, 4))
    after = ranges(plan_file_shards("/in/a", "a-00000000", 9, 4))
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {"a-00000000-00002"}


def test_file_ids_differ_between_tasks_and_paths_but_are_deterministic() -> None:
    assert file_id("task_a", "data/x.jsonl") != file_id("task_b", "data/x.jsonl")
    assert file_id("task_a", "data/x.jsonl") != file_id("task_a", "other/x.jsonl")
    assert file_id("task_a", "data/x.jsonl") == file_id("task_a", "data/x.jsonl")
    # Readable slug of the file name, then a hash.
    assert file_id("task_a", "data/My File.JSONL").startswith("my_file_jsonl-")


def test_new_files_get_readable_ids_unless_taken() -> None:
    assert readable_file_id("part_000.jsonl") == "part_000_jsonl"
    assert readable_file_id("sub/My File.JSONL") == "sub_my_file_jsonl"
    assert readable_file_id("/abs/x.csv") == "abs_x_csv"
    assert readable_file_id("d/" + "y" * 60 + ".txt") == ("y" * 60 + "_txt")[-40:]  # the file name's end stays
    ids = assign_file_ids("t", ["a-b.jsonl", "a_b.jsonl", "c.jsonl", "c.jsonl"], {})
    # a_b.jsonl slugs like a-b.jsonl: the second gets the hashed id; a path listed twice gets one id.
    assert ids == ["a_b_jsonl", file_id("t", "a_b.jsonl"), "c_jsonl", "c_jsonl"]
    assert all(is_shard_key(shard_key(fid, 0)) for fid in ids)


def test_known_files_keep_their_ids_old_hashed_ones_included() -> None:
    legacy = file_id("t", "old.jsonl")
    known = {legacy: "", "new_jsonl": "new.jsonl", "gone_jsonl": "gone.jsonl"}
    ids = assign_file_ids("t", ["new.jsonl", "old.jsonl", "other/gone.jsonl", "gone.jsonl"], known)
    assert ids == ["new_jsonl", legacy, "other_gone_jsonl", "gone_jsonl"]
    # another file whose readable id a known file holds (even one whose entry is gone) gets its hashed id
    assert assign_file_ids("t", ["gone.JSONL"], known) == [file_id("t", "gone.JSONL")]


def test_moving_the_input_folder_keeps_file_ids(tmp_path: Path) -> None:
    for root in ("in1", "in2"):
        (tmp_path / root / "sub").mkdir(parents=True)
        (tmp_path / root / "sub" / "x.jsonl").write_text("{}\n")
    rel1 = relative_name(str(tmp_path / "in1" / "sub" / "x.jsonl"), [tmp_path / "in1"])
    rel2 = relative_name(str(tmp_path / "in2" / "sub" / "x.jsonl"), [tmp_path / "in2"])
    assert rel1 == rel2 == "sub/x.jsonl"
    assert file_id("t", rel1) == file_id("t", rel2)


def test_relative_name_uses_first_containing_root_else_absolute(tmp_path: Path) -> None:
    f = tmp_path / "a" / "b.txt"
    f.parent.mkdir()
    f.write_text("x")
    assert relative_name(str(f), [tmp_path / "zzz", tmp_path / "a", tmp_path]) == "b.txt"
    assert relative_name(str(f), [tmp_path / "zzz"]) == f.resolve().as_posix()


# ------------------------------------------------------------------------------------------ key syntax


@pytest.mark.parametrize(
    "name",
    ["a.jsonl", "Données été.json", "日本語.txt", "日本語", "....", "x" * 200 + ".txt", "a-b-c.parquet", "UP.CSV"],
)
def test_generated_keys_are_shard_keys(name: str) -> None:
    fid = file_id("some task", f"dir/{name}")
    for chunk in (0, 7, 99999, 123456):
        assert is_shard_key(shard_key(readable_file_id(f"dir/{name}"), chunk))
        key = shard_key(fid, chunk)
        assert is_shard_key(key), key
    assert all(is_shard_key(s.key) for s in plan_file_shards("/x", fid, 25, 4))


@pytest.mark.parametrize(
    "key",
    [
        "../../etc/passwd",
        "a/b-0123abcd-00000",
        "abc-0123abcd-0000",  # 4-digit chunk
        "abc-0123ABCD-00000",  # upper-case hash
        "abc-0123abc-00000",  # 7-char hash
        "Abc-0123abcd-00000",
        "-0123abcd-00000",
        pytest.param(
            "abc-0123abcd-00000\n",
            id="trailing-newline",
        ),
        "abc-0123abcd-00000.parquet",
        "",
    ],
)
def test_is_shard_key_rejects_other_strings(key: str) -> None:
    assert not is_shard_key(key)


def test_shard_keys_sort_by_chunk_within_a_file() -> None:
    keys = [s.key for s in plan_file_shards("/x", "f-0123abcd", 12 * 3, 3)]
    assert keys == sorted(keys)


# ------------------------------------------------------------------------------------------- --tasks N


@pytest.mark.parametrize("total, tasks", [(100, 4), (10, 4), (10, 6), (1000, 7), (5, 10), (1, 1), (513, 512)])
def test_shard_size_for_tasks_gives_about_n_shards(total: int, tasks: int) -> None:
    size = shard_size_for_tasks(total, tasks)
    n = math.ceil(total / size)
    assert n <= tasks
    assert n >= min(total, tasks) / 2
    assert size == math.ceil(total / tasks)


def test_shard_size_for_tasks_edges() -> None:
    assert shard_size_for_tasks(0, 3) == 1
    assert shard_size_for_tasks(100, 1) == 100
    with pytest.raises(ValueError, match="--tasks must be >= 1"):
        shard_size_for_tasks(10, 0)


def test_plan_file_shards_refuses_bad_size_and_handles_empty_file() -> None:
    with pytest.raises(ValueError, match="shard size"):
        plan_file_shards("/x", "f-0123abcd", 10, 0)
    assert plan_file_shards("/x", "f-0123abcd", 0, 4) == []


# ---------------------------------------------------------------------------------------- row coverage


def test_every_row_covered_exactly_once() -> None:
    for rows in range(0, 41):
        for size in range(1, 13):
            shards = plan_file_shards("/x", "f-0123abcd", rows, size)
            covered = [r for s in shards for r in range(s.start, s.stop)]
            assert covered == list(range(rows)), (rows, size)
            assert all(0 < s.rows <= size for s in shards)
            assert [s.chunk for s in shards] == list(range(len(shards)))
            assert len({s.key for s in shards}) == len(shards)


def test_multi_file_plan_keeps_file_order_and_unique_keys() -> None:
    files = triples("t", {"b.jsonl": 5, "a.jsonl": 3, "c.jsonl": 0})
    shards = plan_shards(files, 2)
    assert [s.file for s in shards] == ["/in/b.jsonl"] * 3 + ["/in/a.jsonl"] * 2
    assert len({s.key for s in shards}) == len(shards)
    assert sum(s.rows for s in shards) == 8


# ------------------------------------------------------------------------------------ contiguous_ranges


KEYS = [f"k{i}" for i in range(10)]


@pytest.mark.parametrize(
    "wanted, expected",
    [
        (KEYS, [("k0", "k9")]),
        ([], []),
        (["k3"], [("k3", "k3")]),
        (["k0", "k1", "k2", "k5", "k6", "k9"], [("k0", "k2"), ("k5", "k6"), ("k9", "k9")]),
        (["k9", "k1", "k0", "k8"], [("k0", "k1"), ("k8", "k9")]),  # unordered input
        (["k2", "k2", "k3"], [("k2", "k3")]),  # duplicates
        (["nope", "k4"], [("k4", "k4")]),  # unknown keys ignored
        ([k for k in KEYS if k != "k5"], [("k0", "k4"), ("k6", "k9")]),
    ],
)
def test_contiguous_ranges(wanted: list[str], expected: list[tuple[str, str]]) -> None:
    assert contiguous_ranges(KEYS, wanted) == expected


def test_contiguous_ranges_follows_given_order_not_sorted_order() -> None:
    ordered = ["z", "a", "m", "b"]
    assert contiguous_ranges(ordered, {"z", "a", "b"}) == [("z", "a"), ("b", "b")]
    assert contiguous_ranges([], ["a"]) == []


def test_contiguous_ranges_cover_exactly_the_wanted_keys() -> None:
    import random

    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(0, 30)
        ordered = [f"k{i:03d}" for i in range(n)]
        wanted = {k for k in ordered if rng.random() < 0.5}
        out = contiguous_ranges(ordered, wanted)
        covered: list[str] = []
        for first, last in out:
            covered.extend(ordered[ordered.index(first) : ordered.index(last) + 1])
        assert covered == [k for k in ordered if k in wanted]
        # As few ranges as possible: consecutive ranges never touch.
        for (_, last), (first, _) in zip(out, out[1:], strict=False):
            assert ordered.index(first) > ordered.index(last) + 1
