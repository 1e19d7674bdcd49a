"""The shard store on an fsspec URL: a local fsspec filesystem (file://), memory://, and S3 (moto on loopback).

The same TaskStore calls as on a local dir; what differs is only where the bytes go and how a write is made
atomic (rename on a filesystem, one put on an object store).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from s3_server import S3Server

from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.shards.locks import ShardLeases
from llm_infer_dagster.shards.manifest import ShardManifest
from llm_infer_dagster.shards.report import model_report
from llm_infer_dagster.shards.sharding import file_id, shard_key
from llm_infer_dagster.shards.storage import RemotePath, atomic_write, is_url, store_path
from llm_infer_dagster.shards.store import TaskStore, atomic_write_text, check_output_dir

KEY = shard_key(file_id("t", "data.jsonl"), 0)
KEY2 = shard_key(file_id("t", "data.jsonl"), 1)
ANSWERS = pl.DataFrame({"record_id": ["a:0", "a:1"], "answer": ["1", None], "error": [None, "no answer"]})


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh bucket on the loopback S3 server, with this process's AWS variables pointing at it."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    yield s3_server.make_bucket(f"llm-infer-{uuid.uuid4().hex[:8]}")


def test_urls_and_local_paths_are_told_apart() -> None:
    for url in ("s3://bucket/run", "file:///mnt/shared/run", "memory://run"):
        assert is_url(url) and isinstance(store_path(url), RemotePath)
    for local in ("/data/out", "out", "./a://b", "C:\\out"):
        assert not is_url(local) and isinstance(store_path(local), Path)
    # a scheme whose package is missing, or none fsspec knows: one line saying so, before anything runs
    with pytest.raises(SettingsError, match=r"gs://b/x: Please install gcsfs"):
        store_path("gs://b/x")
    with pytest.raises(SettingsError, match=r"nosuch://b/x: Protocol not known: nosuch"):
        check_output_dir("nosuch://b/x")
    with pytest.raises(SettingsError, match=r"in-process memory filesystem: the engine workers .* cannot see it"):
        check_output_dir("memory://run")


def test_a_remote_path_builds_only_paths_under_itself() -> None:
    root = store_path("memory://bucket/run")
    assert isinstance(root, RemotePath)
    report = root / "task" / "report.json"
    assert str(report) == "memory:///bucket/run/task/report.json"
    assert str(report.with_suffix(".md")) == "memory:///bucket/run/task/report.md"
    assert report.name == "report.json" and str(report.parent) == "memory:///bucket/run/task"
    for bad in ("..", ".", "a/b", ""):
        with pytest.raises(ValueError, match="not one path component"):
            root / bad
    with pytest.raises(ValueError, match="would leave the output dir"):
        TaskStore("memory://bucket/run", "../other")


def round_trip(url: str, state_dir: Path) -> TaskStore:
    """What a run does with its store, on ``url``: every kind of file, read back the way the pipeline reads."""
    store = TaskStore(url, "qa", state_dir=state_dir)
    assert not store.has("answers", KEY)
    store.write_frame("answers", KEY, ANSWERS)
    store.write_frame("answers", KEY2, ANSWERS)
    assert store.has("answers", KEY) and store.read_frame("answers", KEY).equals(ANSWERS)
    manifest = ShardManifest(task="qa", shard_size=2, files={}, shards={})
    manifest.save(store)
    assert ShardManifest.load(store) == manifest
    store.number_shards([KEY, KEY2])
    assert store.number(KEY2) == "00001"  # results/index.json lives in the URL too
    atomic_write_text(store.marker_path(KEY), "")
    assert store.marker_path(KEY).is_file()
    report = model_report("default", [store.shard_path("answers", k) for k in (KEY, KEY2)], [])
    assert (report.rows, report.errors) == (4, 2)
    # what must stay on one host is in the local state dir, never in the URL
    store.log_shard(KEY, "completions: done")
    leases = ShardLeases(store, holder="run-1")
    assert leases.try_acquire(KEY)
    leases.release_all()
    assert store.shard_log_path(KEY).is_file() and store.lease_path(KEY).exists()
    assert str(store.state_dir).startswith(str(state_dir))
    return store


def test_a_task_store_on_memory_url(state_dir: Path) -> None:
    store = round_trip(f"memory://run-{uuid.uuid4().hex[:8]}", state_dir)
    assert isinstance(store.output_dir, RemotePath)
    assert not store.output_dir.renames  # an object store's kind: one put per file


def test_a_task_store_on_a_file_url(tmp_path: Path, state_dir: Path) -> None:
    out = tmp_path / "shared"
    round_trip(f"file://{out}", state_dir)
    assert (out / "qa" / "answers" / f"{KEY}.parquet").is_file()
    assert (out / "results" / "index.json").is_file() and (out / "qa" / "shards.json").is_file()
    assert not (out / "logs" / "tasks").exists() and not (out / "qa" / ".leases").exists()  # state is local
    assert [p for p in out.rglob("*") if p.name.endswith(".tmp")] == []


def test_a_task_store_on_s3(s3: str, state_dir: Path) -> None:
    store = round_trip(f"{s3}/runs/one", state_dir)
    fs = store.output_dir.fs  # type: ignore[union-attr]
    names = sorted(p.split("/", 1)[1] for p in fs.find(s3.removeprefix("s3://")))
    assert names == [
        "runs/one/logs/completions/00000",
        "runs/one/qa/answers/" + f"{KEY}.parquet",
        "runs/one/qa/answers/" + f"{KEY2}.parquet",
        "runs/one/qa/shards.json",
        "runs/one/results/index.json",
    ]


@pytest.mark.parametrize("kind", ["file", "memory", "s3"])
def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temp(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    root = {"file": lambda: f"file://{tmp_path}/out", "memory": lambda: f"memory://w-{uuid.uuid4().hex[:8]}",
            "s3": lambda: request.getfixturevalue("s3")}[kind]()  # fmt: skip
    target = store_path(f"{root}/t/shard.parquet")
    assert isinstance(target, RemotePath)
    atomic_write_text(target, "old")

    def half(tmp: Path) -> Any:
        tmp.write_text("new, half writ")
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        atomic_write(target, half)
    assert target.read_text() == "old"
    assert [p for p in target.fs.find(target.parent.path) if not p.endswith("/shard.parquet")] == []


def test_check_output_dir_refuses_a_missing_bucket_before_anything_runs(s3: str) -> None:
    check_output_dir(f"{s3}/run")  # the bucket exists: fine
    with pytest.raises(SettingsError, match=r"output dir s3://no-such-bucket-here/run is not writable.*bucket exists"):
        check_output_dir("s3://no-such-bucket-here/run")


def test_the_state_dir_of_a_url_is_local_and_one_per_url(state_dir: Path, tmp_path: Path) -> None:
    a, b = TaskStore("memory://one", "qa", state_dir=state_dir), TaskStore("memory://two", "qa", state_dir=state_dir)
    assert a.state_dir != b.state_dir and a.state_dir.parent == state_dir.resolve()
    local = TaskStore(tmp_path / "out", "qa", state_dir=state_dir)
    assert local.state_dir == local.output_dir  # a local dir keeps everything in itself, as before
    home = TaskStore("memory://one", "qa").state_dir  # no state_dir set: under the user's cache
    assert home.parent == Path.home() / ".cache" / "llm-infer-dagster" / "state" and home.name == a.state_dir.name
    assert os.fspath(local.lease_path(KEY)) == os.fspath(tmp_path / "out" / "qa" / ".leases" / f"{KEY}.lock")
