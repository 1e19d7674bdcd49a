"""Register a task's shards: one read per changed input file, a manifest on disk, dynamic partitions in Dagster.

The manifest (``<output>/<task>/shards.json``) maps each shard key to its file and row range; the raw asset
reads it to know which rows a partition holds. Unchanged files (same size and mtime) are not re-read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path

from dagster import AssetKey, DagsterInstance, DynamicPartitionsDefinition

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.store import ASSETS, TaskStore, atomic_write_json
from llm_infer_dagster.tasks.loader import TaskConfig
from llm_infer_dagster.tasks.sharding import (
    DEFAULT_SHARD_SIZE,
    Shard,
    file_id,
    grow_file_shards,
    plan_file_shards,
    relative_name,
    shard_size_for_tasks,
)

log = logging.getLogger(__name__)


def partitions_def_for(task: TaskConfig) -> DynamicPartitionsDefinition:
    """One dynamic partitions definition per task: its partitions are its shards."""
    return DynamicPartitionsDefinition(name=f"{task.dagster_name}_shards")


@dataclass
class FileEntry:
    path: str
    file_id: str
    rows: int
    size: int
    mtime_ns: int
    sha256: str = ""  # of the whole file when it was last read


@dataclass
class ShardManifest:
    """Which rows each shard holds. Shards are kept in registration order (Dagster's partition order)."""

    task: str
    shard_size: int
    files: dict[str, FileEntry] = field(default_factory=dict)
    shards: dict[str, Shard] = field(default_factory=dict)

    def shard(self, key: str) -> Shard:
        try:
            return self.shards[key]
        except KeyError:
            raise TaskConfigError(
                f"shard {key!r} is not in the manifest of task {self.task!r}; register shards first "
                "(llm-infer --plan_only, or the task's register job)"
            ) from None

    def to_json(self) -> dict[str, object]:
        return {
            "task": self.task,
            "shard_size": self.shard_size,
            "files": {k: vars(v) for k, v in self.files.items()},
            "shards": [s.to_dict() for s in self.shards.values()],
        }

    @classmethod
    def from_json(cls, data: dict) -> ShardManifest:
        return cls(
            task=data["task"],
            shard_size=int(data["shard_size"]),
            files={k: FileEntry(**v) for k, v in data["files"].items()},
            shards={s["key"]: Shard(**s) for s in data["shards"]},
        )

    @classmethod
    def load(cls, store: TaskStore) -> ShardManifest | None:
        if not store.manifest_path.is_file():
            return None
        return cls.from_json(json.loads(store.manifest_path.read_text(encoding="utf-8")))

    def save(self, store: TaskStore) -> None:
        atomic_write_json(store.manifest_path, self.to_json())


@dataclass
class Registration:
    manifest: ShardManifest
    new_keys: list[str]
    files_read: int
    shrunk_files: list[str]
    modified_files: list[str] = field(default_factory=list)  # same file, rows edited (not just appended)
    vanished_files: list[str] = field(default_factory=list)  # in the manifest, no longer in get_file_list
    changed_keys: list[str] = field(default_factory=list)  # unfinished last shards extended by a grown file


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _digests(path: str, prefix_size: int) -> tuple[str, str]:
    """sha256 of the whole file and of its first ``prefix_size`` bytes (to tell an append from an edit)."""
    whole, prefix = hashlib.sha256(), hashlib.sha256()
    seen = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            whole.update(chunk)
            if seen < prefix_size:
                prefix.update(chunk[: prefix_size - seen])
            seen += len(chunk)
    return whole.hexdigest(), prefix.hexdigest()


def plan_registration(
    task: TaskConfig,
    store: TaskStore,
    input_path: str | None,
    *,
    shard_size: int | None = None,
    tasks: int | None = None,
    reshard: bool = False,
    frozen: Container[str] = (),
) -> Registration:
    """Work out the task's shards, re-reading only new or changed files. Writes nothing.

    ``frozen`` shards (already materialized) keep their row ranges when their file grows.
    """
    files = task.list_files(input_path)
    if not files:
        raise TaskConfigError(f"{task.config_file}: get_file_list({input_path!r}) returned no files")
    old = None if reshard else ShardManifest.load(store)
    roots = [r for r in (input_path, task.folder) if r]
    entries: list[FileEntry] = []
    files_read = 0
    modified: list[str] = []
    for path in files:
        fid = file_id(task.name, relative_name(path, roots))
        size, mtime = _stat(path)
        prev = old.files.get(fid) if old else None
        if prev is not None and (prev.size, prev.mtime_ns) == (size, mtime):
            rows, digest = prev.rows, prev.sha256
        else:
            digest, prefix_digest = _digests(path, prev.size if prev else 0)
            if prev is not None and digest == prev.sha256:
                rows = prev.rows  # touched, not changed: no read_file
            else:
                rows = len(task.read_rows(path))
                files_read += 1
                if prev is not None and prev.sha256 and (size < prev.size or prefix_digest != prev.sha256):
                    modified.append(path)  # rows already sharded may differ: report, never silently keep
        entries.append(FileEntry(path=path, file_id=fid, rows=rows, size=size, mtime_ns=mtime, sha256=digest))
    current = {e.file_id for e in entries}
    vanished = [f.path for fid, f in (old.files.items() if old else []) if fid not in current]

    total = sum(e.rows for e in entries)
    wanted = shard_size or (shard_size_for_tasks(total, tasks) if tasks else None)
    if old is not None:
        if wanted and wanted != old.shard_size:
            log.warning(
                "task %s keeps its %d-row shards (asked for %d); re-cut them with --rerun",
                task.name,
                old.shard_size,
                wanted,
            )
        size_ = old.shard_size
    else:
        size_ = wanted or DEFAULT_SHARD_SIZE

    manifest = ShardManifest(task=task.name, shard_size=size_)
    if old is not None:
        manifest.files.update(old.files)
        manifest.shards.update(old.shards)
    shrunk: list[str] = []
    new_keys: list[str] = []
    changed: list[str] = []
    for e in entries:
        prev = manifest.files.get(e.file_id)
        if prev is not None and e.rows < prev.rows:
            shrunk.append(e.path)
        manifest.files[e.file_id] = e
        existing = [s for s in manifest.shards.values() if s.file_id == e.file_id]
        planned = (
            grow_file_shards(existing, e.path, e.rows, size_, frozen)
            if existing
            else plan_file_shards(e.path, e.file_id, e.rows, size_)
        )
        for s in planned:
            old_shard = manifest.shards.get(s.key)
            if old_shard is None:
                new_keys.append(s.key)
            elif (old_shard.start, old_shard.stop) != (s.start, s.stop):
                changed.append(s.key)
            manifest.shards[s.key] = s
    return Registration(
        manifest=manifest,
        new_keys=new_keys,
        files_read=files_read,
        shrunk_files=shrunk,
        modified_files=[m for m in modified if m not in shrunk],
        vanished_files=vanished,
        changed_keys=changed,
    )


def register_shards(
    instance: DagsterInstance,
    task: TaskConfig,
    store: TaskStore,
    input_path: str | None,
    *,
    shard_size: int | None = None,
    tasks: int | None = None,
    reshard: bool = False,
) -> Registration:
    """Plan, save the manifest, then add the new shard keys as Dagster partitions."""
    reg, to_add = sync_manifest(instance, task, store, input_path, shard_size=shard_size, tasks=tasks, reshard=reshard)
    if to_add:
        instance.add_dynamic_partitions(_pdef_name(task), to_add)
    return reg


def _pdef_name(task: TaskConfig) -> str:
    name = partitions_def_for(task).name
    assert name is not None
    return name


def sync_manifest(
    instance: DagsterInstance,
    task: TaskConfig,
    store: TaskStore,
    input_path: str | None,
    *,
    shard_size: int | None = None,
    tasks: int | None = None,
    reshard: bool = False,
) -> tuple[Registration, list[str]]:
    """Plan and save the manifest; return it with the shard keys Dagster does not know yet (not added)."""
    raw_key = AssetKey([task.dagster_name, "raw"])
    frozen = set() if reshard else instance.get_materialized_partitions(raw_key)
    reg = plan_registration(task, store, input_path, shard_size=shard_size, tasks=tasks, reshard=reshard, frozen=frozen)
    pdef_name = _pdef_name(task)
    if reshard:
        # Re-cut shards reuse keys with other row ranges: forget every old partition and materialization.
        for key in instance.get_dynamic_partitions(pdef_name):
            instance.delete_dynamic_partition(pdef_name, key)
        instance.wipe_assets([AssetKey([task.dagster_name, a]) for a in ASSETS])
        for asset in ASSETS:
            shutil.rmtree(store.task_dir / asset, ignore_errors=True)
        reg.new_keys = list(reg.manifest.shards)
    reg.manifest.save(store)
    known = set(instance.get_dynamic_partitions(pdef_name))
    return reg, [k for k in reg.manifest.shards if k not in known]


def registered_keys(instance: DagsterInstance, task: TaskConfig) -> list[str]:
    """The task's shard keys in Dagster's partition order."""
    name = partitions_def_for(task).name
    assert name is not None
    return list(instance.get_dynamic_partitions(name))


def manifest_for(store: TaskStore) -> ShardManifest:
    m = ShardManifest.load(store)
    if m is None:
        raise TaskConfigError(
            f"no shards registered for task {store.task_name!r} under {store.output_dir} "
            f"({Path(store.manifest_path)} is missing); run `llm-infer --plan_only ...` or the "
            f"{store.task_name}_register_shards job first"
        )
    return m
