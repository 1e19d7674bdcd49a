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
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dagster import AssetKey, AssetObservation, DagsterEventType, DagsterInstance, DynamicPartitionsDefinition

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.orchestration.dagster_private import DATA_VERSION_IS_USER_PROVIDED_TAG, DATA_VERSION_TAG
from llm_infer_dagster.orchestration.event_batches import report_runless_asset_events
from llm_infer_dagster.shards.locks import file_lock
from llm_infer_dagster.shards.sharding import (
    DEFAULT_SHARD_SIZE,
    Shard,
    file_id,
    grow_file_shards,
    plan_file_shards,
    relative_name,
    row_digest,
    shard_size_for_tasks,
    trim_to_rows,
    with_digests,
)
from llm_infer_dagster.shards.store import ASSETS, TaskStore, atomic_write_json
from llm_infer_dagster.tasks.loader import TaskConfig, to_json

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

    def runnable(self, keys: Iterable[str], *, include_short: bool = False) -> list[str]:
        """``keys`` that can be (re)made: their input file is still listed and still holds their rows.

        A vanished file's shards, and (unless ``include_short``) shards whose file shrank under them, keep the
        results they have: redoing them now would replace finished answers with fewer rows or none.
        """
        short = set() if include_short else set(self.short_keys())
        return [k for k in keys if k in self.shards and self.shards[k].file_id in self.files and k not in short]

    def short_keys(self) -> list[str]:
        """Shards that hold rows past their file's end: the file shrank or was emptied since they were cut."""
        return [k for k, s in self.shards.items() if s.file_id in self.files and s.stop > self.files[s.file_id].rows]

    def sharded_rows(self, file_id: str) -> int:
        """How many rows of the file its shards cover (its row count when they were cut or last grown)."""
        return max((s.stop for s in self.shards.values() if s.file_id == file_id), default=0)

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
    changed_keys: list[str] = field(default_factory=list)  # partial last shards extended by a grown file
    observed: dict[str, str] = field(default_factory=dict)  # shard key -> digest, for new or changed rows
    resharded: bool = False  # shards were re-cut at another size: old keys and results are gone

    @property
    def short_keys(self) -> list[str]:
        """Finished or not, shards whose file no longer holds all their rows; kept as they are (see runnable)."""
        return self.manifest.short_keys()


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
    default_size: int | None = None,
    recut: bool = False,
    trim_short: bool = False,
) -> Registration:
    """Work out the task's shards, re-reading only new or changed files. Writes nothing.

    ``shard_size`` / ``tasks`` are an explicit request; ``default_size`` (the task's settings) only applies
    when shards are first cut. Existing shards keep their size unless ``recut`` and the request differs.

    A file with fewer rows than its shards hold (truncated, emptied by accident, a failed sync) never costs
    finished results: shards whose rows are all still there get their new digests (an edited row makes its shard
    stale, as it should), and shards past the new end keep their old digest and results, reported as
    ``short_keys`` and left out of ``runnable``. Only ``trim_short`` (an explicit ``--rerun``) cuts them back to
    the rows the file has now, so that they are redone.
    """
    files = task.list_files(input_path)
    if not files:
        raise TaskConfigError(f"{task.config_file}: get_file_list({input_path!r}) returned no files")
    old = ShardManifest.load(store)
    roots = [r for r in (input_path, task.folder) if r]
    entries: list[FileEntry] = []
    row_digests: dict[str, list[bytes]] = {}  # per file id, for the files read now

    def read(path: str, fid: str) -> int:
        rows = task.read_rows(path)
        row_digests[fid] = [row_digest(to_json(r)) for r in rows]
        return len(rows)

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
                rows = read(path, fid)
                if prev is not None and prev.sha256 and (size < prev.size or prefix_digest != prev.sha256):
                    modified.append(path)  # rows already sharded may differ: their digests say which
        entries.append(FileEntry(path=path, file_id=fid, rows=rows, size=size, mtime_ns=mtime, sha256=digest))
    current = {e.file_id for e in entries}
    gone = [fid for fid in (old.files if old else {}) if fid not in current]
    vanished = [old.files[fid].path for fid in gone] if old else []

    total = sum(e.rows for e in entries)
    requested = shard_size or (shard_size_for_tasks(total, tasks) if tasks else None)
    resharded = bool(old is not None and recut and requested and requested != old.shard_size)
    if old is not None and not resharded:
        if requested and requested != old.shard_size:
            log.warning(
                "task %s keeps its %d-row shards (asked for %d); re-cut them with --rerun",
                task.name,
                old.shard_size,
                requested,
            )
        size_ = old.shard_size
    else:
        size_ = requested or default_size or DEFAULT_SHARD_SIZE

    manifest = ShardManifest(task=task.name, shard_size=size_)
    if old is not None and not resharded:
        manifest.files.update({fid: f for fid, f in old.files.items() if fid not in gone})  # reported once
        manifest.shards.update(old.shards)  # a vanished file's shards keep their results
    shrunk: list[str] = []
    new_keys: list[str] = []
    changed: list[str] = []
    observed: dict[str, str] = {}
    for e in entries:
        prev = manifest.files.get(e.file_id)
        if prev is not None and e.rows < prev.rows:
            shrunk.append(e.path)
        manifest.files[e.file_id] = e
        existing = sorted((s for s in manifest.shards.values() if s.file_id == e.file_id), key=lambda s: s.chunk)
        if existing and e.rows < existing[-1].stop:  # shrunk under its shards: keep their ranges
            planned = [replace(s, file=e.path) for s in existing]
            if trim_short:
                planned = trim_to_rows(planned, e.rows)
                if e.file_id not in row_digests:
                    read(e.path, e.file_id)
        elif existing:
            planned = grow_file_shards(existing, e.path, e.rows, size_)
        else:
            planned = plan_file_shards(e.path, e.file_id, e.rows, size_)
        if e.file_id not in row_digests and any(not s.digest for s in planned):
            read(e.path, e.file_id)  # a re-cut, or a manifest from before digests: one read to fill them in
        if e.file_id in row_digests:
            digested = with_digests(planned, row_digests[e.file_id])
            # A shard past the file's end keeps the digest of the rows it was made from (see the docstring).
            planned = [old if old.stop > e.rows else new for old, new in zip(planned, digested, strict=True)]
        for s in planned:
            old_shard = manifest.shards.get(s.key)
            if old_shard is None:
                new_keys.append(s.key)
            elif (old_shard.start, old_shard.stop) != (s.start, s.stop):
                changed.append(s.key)
            if old_shard is None or old_shard.digest != s.digest:
                observed[s.key] = s.digest
            manifest.shards[s.key] = s
    return Registration(
        manifest=manifest,
        new_keys=new_keys,
        files_read=len(row_digests),
        shrunk_files=shrunk,
        modified_files=[m for m in modified if m not in shrunk],
        vanished_files=vanished,
        changed_keys=changed,
        observed=observed,
        resharded=resharded,
    )


def register_shards(
    instance: DagsterInstance,
    task: TaskConfig,
    store: TaskStore,
    input_path: str | None,
    *,
    shard_size: int | None = None,
    tasks: int | None = None,
    recut: bool = False,
    trim_short: bool = False,
) -> Registration:
    """Plan, save the manifest, add the new shard keys as Dagster partitions, observe changed input rows.

    Killed at any point, the next call completes it: partitions and observations are worked out against what
    Dagster has recorded, not against the previous manifest.
    """
    with file_lock(store.task_dir / ".register.lock"):  # two commands starting at once register one at a time
        reg, to_add = _sync_manifest(
            instance, task, store, input_path, shard_size=shard_size, tasks=tasks, recut=recut, trim_short=trim_short
        )
        if to_add:
            instance.add_dynamic_partitions(_pdef_name(task), to_add)
        report_runless_asset_events(instance, input_observations(task, reg))  # one transaction per 500 shards
    return reg


def input_key(task: TaskConfig) -> AssetKey:
    """The task's input rows, an external asset observed per shard; ``raw`` depends on it."""
    return AssetKey([task.dagster_name, "input"])


def input_observations(task: TaskConfig, reg: Registration) -> list[AssetObservation]:
    """One observation per shard whose rows are new or changed, its data version the rows' digest."""
    return [
        AssetObservation(
            asset_key=input_key(task),
            partition=key,
            tags={DATA_VERSION_TAG: digest, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"},
            metadata={"rows": reg.manifest.shards[key].rows, "file": reg.manifest.shards[key].file},
        )
        for key, digest in reg.observed.items()
    ]


def recorded_input_versions(instance: DagsterInstance, task: TaskConfig, keys: list[str]) -> dict[str, str]:
    """Shard key -> the input data version Dagster last recorded for it (one query for all shards)."""
    if not keys:
        return {}
    tags = instance.event_log_storage.get_latest_tags_by_partition(
        input_key(task), DagsterEventType.ASSET_OBSERVATION, [DATA_VERSION_TAG], asset_partitions=keys
    )
    return {k: t[DATA_VERSION_TAG] for k, t in tags.items() if DATA_VERSION_TAG in t}


def _pdef_name(task: TaskConfig) -> str:
    name = partitions_def_for(task).name
    assert name is not None
    return name


def sync_manifest(
    instance: DagsterInstance,
    task: TaskConfig,
    store: TaskStore,
    input_path: str | None,
    **kwargs: Any,
) -> tuple[Registration, list[str]]:
    """:func:`_sync_manifest` under the task's registration lock (the sensor's entry point)."""
    with file_lock(store.task_dir / ".register.lock"):
        return _sync_manifest(instance, task, store, input_path, **kwargs)


def _sync_manifest(
    instance: DagsterInstance,
    task: TaskConfig,
    store: TaskStore,
    input_path: str | None,
    *,
    shard_size: int | None = None,
    tasks: int | None = None,
    recut: bool = False,
    trim_short: bool = False,
) -> tuple[Registration, list[str]]:
    """Plan and save the manifest; return it with the shard keys Dagster does not know yet (not added).

    Only a re-cut at another shard size forgets old partitions and results (their keys would name other rows);
    anything else keeps every finished shard. ``reg.observed`` holds every shard whose rows' digest Dagster has
    not recorded as the input's data version, so observations a killed registration (or a sensor's tick
    preview) never recorded are recorded by the next one.
    """
    reg = plan_registration(
        task,
        store,
        input_path,
        shard_size=shard_size,
        tasks=tasks,
        default_size=task.settings.shard_size,
        recut=recut,
        trim_short=trim_short,
    )
    pdef_name = _pdef_name(task)
    if reg.resharded:
        for key in instance.get_dynamic_partitions(pdef_name):
            instance.delete_dynamic_partition(pdef_name, key)
            for kind in ("infer", "extract", "text"):
                store.result_path(kind, key).unlink(missing_ok=True)
            store.shard_log_path(key).unlink(missing_ok=True)
        named = [AssetKey([task.dagster_name, m, a]) for m in task.settings.models for a in ("completions", "answers")]
        instance.wipe_assets([AssetKey([task.dagster_name, a]) for a in ASSETS] + named + [input_key(task)])
        for asset in ASSETS:
            shutil.rmtree(store.task_dir / asset, ignore_errors=True)
        shutil.rmtree(store.task_dir / "models", ignore_errors=True)
        reg.new_keys = list(reg.manifest.shards)
    recorded = recorded_input_versions(instance, task, list(reg.manifest.shards))
    reg.observed = {k: s.digest for k, s in reg.manifest.shards.items() if s.digest and recorded.get(k) != s.digest}
    reg.manifest.save(store)
    # Seed-layout numbers follow the shard order: new shards take the next ones, old ones keep theirs.
    store.number_shards(
        list(reg.manifest.shards), about={k: {"file": s.file, "rows": s.rows} for k, s in reg.manifest.shards.items()}
    )
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
