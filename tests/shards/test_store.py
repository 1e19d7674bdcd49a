"""The shard store: atomic writes, paths that cannot escape the output dir, and Parquet round trips."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from llm_infer_dagster.shards.sharding import file_id, shard_key
from llm_infer_dagster.shards.store import TaskStore, atomic_write, atomic_write_json, atomic_write_text
from llm_infer_dagster.shards.tables import ASSETS

KEY = shard_key(file_id("t", "data.jsonl"), 0)
KEY2 = shard_key(file_id("t", "data.jsonl"), 1)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith("."))


# ------------------------------------------------------------------------------------------ atomic_write


def test_atomic_write_creates_parents_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "out.txt"
    atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert leftovers(target.parent) == []


def test_atomic_write_keeps_old_file_when_writer_raises_midway(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old content")
    seen: list[Path] = []

    def half_write(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.parent == target.parent  # same filesystem, so the rename is atomic
        with tmp.open("w") as f:
            f.write("new partial")
            f.flush()
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_write)
    assert target.read_text() == "old content"
    assert not seen[0].exists()
    assert leftovers(tmp_path) == []


def test_atomic_write_cleans_up_on_keyboard_interrupt(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"

    def interrupted(tmp: Path) -> None:
        tmp.write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_existing(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2, "é": [1, 2]})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": 2, "é": [1, 2]}
    assert leftovers(tmp_path) == []


def test_atomic_write_parquet_failure_keeps_previous_parquet(tmp_path: Path) -> None:
    store = TaskStore(tmp_path, "t")
    good = pl.DataFrame({"a": [1, 2, 3]})
    path = store.write_frame("raw", KEY, good)

    class Boom(pl.DataFrame):
        def write_parquet(self, *args, **kwargs):  # type: ignore[override]
            Path(args[0]).write_bytes(b"PAR1 garbage")
            raise OSError("interrupted")

    with pytest.raises(OSError, match="interrupted"):
        store.write_frame("raw", KEY, Boom({"a": [9]}))
    assert store.read_frame("raw", KEY).equals(good)
    assert leftovers(path.parent) == []


def test_atomic_write_gives_normal_file_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777


# ---------------------------------------------------------------------------------------- path safety


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", "../sibling", "/etc", "", "."])
def test_task_store_refuses_task_names_that_escape(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="would leave the output dir"):
        TaskStore(tmp_path / "out", name)


def test_task_store_refuses_dotdot(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        TaskStore(tmp_path / "out", "..")


def test_task_store_accepts_plain_names(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "out", "qa_regex.v2-x")
    assert store.task_dir == (tmp_path / "out" / "qa_regex.v2-x").resolve()
    assert store.manifest_path == store.task_dir / "shards.json"


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "a/b", "..", "x.parquet", KEY + "/../../x", KEY.upper(), "", KEY + " "]
)
def test_task_store_refuses_non_shard_keys(tmp_path: Path, key: str) -> None:
    store = TaskStore(tmp_path, "t")
    for build in (
        lambda: store.shard_path("raw", key),
        lambda: store.result_path("infer", key),
        lambda: store.shard_log_path(key),
        lambda: store.write_frame("raw", key, pl.DataFrame({"a": [1]})),
    ):
        with pytest.raises(ValueError, match="not a shard key"):
            build()
    assert list(tmp_path.iterdir()) == []


def test_unknown_asset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown asset 'outputs'"):
        TaskStore(tmp_path, "t").shard_path("outputs", KEY)


def test_paths_stay_under_output_dir(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "out", "t")
    out = (tmp_path / "out").resolve()
    for asset in ASSETS:
        assert store.shard_path(asset, KEY) == out / "t" / asset / f"{KEY}.parquet"
    assert store.result_path("infer", KEY) == out / "results" / "infer" / "00000.json"
    assert store.result_path("text", KEY) == out / "results" / "text" / "00000.txt"
    assert store.shard_log_path(KEY) == out / "logs" / "tasks" / "00000.log"
    assert store.marker_path(KEY) == out / "logs" / "completions" / "00000"


def test_seed_numbers_follow_registration_order_and_never_change(tmp_path: Path) -> None:
    """Issue 8: results/*/<NNNNN>.json in the task's shard order, padded to --id_length, stable as data grows."""
    keys = [f"a_jsonl-0123abcd-{i:05d}" for i in range(3)]
    store = TaskStore(tmp_path, "t", id_length=3)
    store.number_shards(keys[:2], about={keys[0]: {"rows": 4}})
    assert [store.number(k) for k in keys[:2]] == ["000", "001"]
    other = TaskStore(tmp_path, "u")  # another task in the same output dir takes the next free numbers
    assert other.number(keys[0]) == "00002"
    grown = TaskStore(tmp_path, "t", id_length=3)  # a later process, after the data grew
    grown.number_shards(keys)
    assert [grown.number(k) for k in keys] == ["000", "001", "003"]
    index = json.loads((tmp_path / "results" / "index.json").read_text())["entries"]
    assert index[0] == {"id": 0, "task": "t", "shard": keys[0], "rows": 4}
    assert [(e["task"], e["id"]) for e in index] == [("t", 0), ("t", 1), ("u", 2), ("t", 3)]


# ------------------------------------------------------------------------------------------ round trips


def test_frame_round_trip(tmp_path: Path) -> None:
    store = TaskStore(tmp_path, "t")
    df = pl.DataFrame(
        {
            "record_id": ["a:0", "a:1", "a:2"],
            "response": ["x", None, "ünïcode ✓"],
            "responses": [["x", "y"], [], ["z"]],
            "prompt_tokens": [1, 2, 3],
            "ok": [True, False, True],
            "score": [0.5, None, 1.25],
        },
        schema={
            "record_id": pl.String,
            "response": pl.String,
            "responses": pl.List(pl.String),
            "prompt_tokens": pl.Int64,
            "ok": pl.Boolean,
            "score": pl.Float64,
        },
    )
    assert not store.has("completions", KEY)
    path = store.write_frame("completions", KEY, df)
    assert path == store.shard_path("completions", KEY) and path.is_file()
    assert store.has("completions", KEY)
    assert not store.has("completions", KEY2)
    back = store.read_frame("completions", KEY)
    assert back.schema == df.schema
    assert back.equals(df)
    assert pl.read_parquet(path).equals(df)  # a plain Parquet file, readable without the store


def test_empty_frame_round_trip(tmp_path: Path) -> None:
    store = TaskStore(tmp_path, "t")
    df = pl.DataFrame(schema={"record_id": pl.String, "error": pl.String})
    store.write_frame("raw", KEY, df)
    back = store.read_frame("raw", KEY)
    assert back.height == 0 and back.schema == df.schema


def test_read_missing_frame_says_what_to_materialize(tmp_path: Path) -> None:
    store = TaskStore(tmp_path, "mytask")
    with pytest.raises(FileNotFoundError) as exc:
        store.read_frame("prompts", KEY)
    assert KEY in str(exc.value) and "mytask/prompts" in str(exc.value)


def test_log_shard_appends_lines(tmp_path: Path) -> None:
    store = TaskStore(tmp_path, "t")
    store.log_shard(KEY, "first")
    store.log_shard(KEY, "second")
    lines = store.shard_log_path(KEY).read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("[t] first") and lines[1].endswith("[t] second")


def test_a_crashed_writers_temp_is_swept_and_a_live_ones_is_kept(tmp_path: Path) -> None:
    """SIGKILL mid-write leaves a temp beside its target (never a half-written final file); the next run's
    sweep removes it, but never the temp of a process still writing, nor one written on another host."""
    import subprocess
    import sys

    store = TaskStore(tmp_path / "out", "t")
    store.write_frame("raw", KEY, pl.DataFrame({"x": [1]}))
    folder = store.shard_path("raw", KEY).parent
    code = (
        "import os, sys, pathlib\n"
        "from llm_infer_dagster.shards.storage import atomic_write\n"
        "def write(tmp):\n"
        "    tmp.write_text('half')\n"
        "    os.kill(os.getpid(), 9)\n"  # dies mid-write, as a SIGKILLed run does
        "atomic_write(pathlib.Path(sys.argv[1]), write)\n"
    )
    died = subprocess.run([sys.executable, "-c", code, str(store.shard_path("raw", KEY2))], capture_output=True)
    assert died.returncode == -9
    (left,) = leftovers(folder)
    host = left.rsplit(".", 4)[1]  # this host, as the dead writer named it
    mine = folder / f".{KEY}.parquet.{host}.{os.getpid()}.abcdefgh.tmp"  # a live writer's
    mine.write_text("writing")
    elsewhere = folder / f".{KEY}.parquet.otherhost.1.abcdefgh.tmp"
    elsewhere.write_text("writing")
    assert store.sweep_stale_temps() == 1
    assert leftovers(folder) == sorted([mine.name, elsewhere.name])
    assert not store.shard_path("raw", KEY2).exists() and store.read_frame("raw", KEY).height == 1
