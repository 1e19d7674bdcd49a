"""A task's shard manifest: which rows each shard holds, worked out from its input files. No Dagster.

The manifest (``<output>/<task>/shards.json``) maps each shard key to its file and row range; the raw asset
reads it to know which rows a partition holds. Unchanged files (same size and mtime) are not re-read.
:func:`plan_registration` works out the shards and writes nothing; :func:`save_manifest` writes them;
:func:`delete_results_for_recut` is the one function here that deletes results. Dagster's side (partitions,
input observations) is ``orchestration/registry.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.shards.sharding import (
    DEFAULT_SHARD_SIZE,
    Shard,
    assign_file_ids,
    grow_file_shards,
    plan_file_shards,
    relative_name,
    row_digest,
    shard_size_for_tasks,
    trim_to_rows,
    with_digests,
)
from llm_infer_dagster.shards.storage import remove_tree
from llm_infer_dagster.shards.store import TaskStore, atomic_write_json
from llm_infer_dagster.shards.tables import ASSETS
from llm_infer_dagster.tasks.images import RowImages, images_changed
from llm_infer_dagster.tasks.loader import TaskConfig, to_json


@dataclass
class FileEntry:
    path: str
    file_id: str
    rows: int
    size: int
    mtime_ns: int
    sha256: str = ""  # of the whole file when it was last read
    rel: str = ""  # path relative to the input root (keeps a readable id when the input folder moves)
    #: The images its rows name (tasks/images.py), path -> [size, mtime_ns] or None while missing: a change
    #: re-reads the file, so the rows naming a replaced image get a new digest.
    images: dict[str, list[int] | None] = field(default_factory=dict)


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
    def from_json(cls, data: dict[str, Any]) -> ShardManifest:
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
    # shard key -> digest, for new or changed rows; registration replaces it with unrecorded_digests
    observed: dict[str, str] = field(default_factory=dict)
    resharded: bool = False  # shards were re-cut at another size: old keys and results are gone
    notes: list[str] = field(default_factory=list)  # warnings for the caller's channel (terminal, Dagster log)

    @property
    def short_keys(self) -> list[str]:
        """Finished or not, shards whose file no longer holds all their rows; kept as they are (see runnable)."""
        return self.manifest.short_keys()


def _known_files(old: ShardManifest | None, roots: Sequence[str | Path]) -> dict[str, str]:
    """File id -> relative path of every file the manifest has shards or an entry for (vanished ones too)."""
    if old is None:
        return {}
    known = {fid: e.rel or relative_name(e.path, roots) for fid, e in old.files.items()}
    for s in old.shards.values():  # a vanished file has shards but no entry: its path, once per file
        if s.file_id not in known:
            known[s.file_id] = relative_name(s.file, roots)
    return known


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
    # per file id, for the files read now: what gives planned shards of that file their digests
    row_digests: dict[str, Callable[[list[Shard]], list[Shard]]] = {}
    image_stats: dict[str, dict[str, list[int] | None]] = {}  # per file id read now: the images its rows name

    def read(path: str, fid: str) -> int:
        counted = task.count_rows(path)  # a task that can count and digest rows without read_file (task.yaml)
        if counted is not None:
            row_digests[fid] = lambda planned: _digested(task, path, planned)
            return counted
        rows = task.read_rows(path)
        images = RowImages(path)  # a row's version covers the content of the images it names
        digests = [row_digest(j + images.suffix(r, j)) for r, j in ((r, to_json(r)) for r in rows)]
        image_stats[fid] = images.stats
        row_digests[fid] = lambda planned: with_digests(planned, digests)
        return len(rows)

    modified: list[str] = []
    rels = [relative_name(path, roots) for path in files]
    fids = assign_file_ids(task.name, rels, _known_files(old, roots))
    for path, rel, fid in zip(files, rels, fids, strict=True):
        size, mtime = _stat(path)
        prev = old.files.get(fid) if old else None
        images_moved = prev is not None and images_changed(prev.images)  # rows unchanged, an image replaced
        if prev is not None and (prev.size, prev.mtime_ns) == (size, mtime) and not images_moved:
            rows, digest = prev.rows, prev.sha256
        else:
            digest, prefix_digest = _digests(path, prev.size if prev else 0)
            if prev is not None and digest == prev.sha256 and not images_moved:
                rows = prev.rows  # touched, not changed: no read_file
            else:
                rows = read(path, fid)
                if prev is not None and prev.sha256 and (size < prev.size or prefix_digest != prev.sha256):
                    modified.append(path)  # rows already sharded may differ: their digests say which
        entries.append(FileEntry(path=path, file_id=fid, rows=rows, size=size, mtime_ns=mtime, sha256=digest, rel=rel,
                                 images=prev.images if prev is not None else {}))  # fmt: skip
    current = {e.file_id for e in entries}
    gone = [fid for fid in (old.files if old else {}) if fid not in current]
    vanished = [old.files[fid].path for fid in gone] if old else []

    total = sum(e.rows for e in entries)
    requested = shard_size or (shard_size_for_tasks(total, tasks) if tasks else None)
    resharded = bool(old is not None and recut and requested and requested != old.shard_size)
    notes: list[str] = []
    if old is not None and not resharded:
        if requested and requested != old.shard_size:
            notes.append(
                f"task {task.name} keeps its {old.shard_size}-row shards (asked for {requested}); "
                "re-cut them with --rerun"
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
            digested = row_digests[e.file_id](planned)
            # A shard past the file's end keeps the digest of the rows it was made from (see the docstring).
            planned = [old if old.stop > e.rows else new for old, new in zip(planned, digested, strict=True)]
        e.images = image_stats.get(e.file_id, e.images)
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
        notes=notes,
    )


def _digested(task: TaskConfig, path: str, planned: list[Shard]) -> list[Shard]:
    """``planned`` with their digests from the task's own shard digests (no read_file: see count_rows)."""
    digests = task.shard_digests(path, [(s.start, s.stop) for s in planned])
    return [replace(s, digest=d) for s, d in zip(planned, digests, strict=True)]


def manifest_for(store: TaskStore) -> ShardManifest:
    """The task's saved manifest; TaskConfigError saying how to register shards when there is none."""
    m = ShardManifest.load(store)
    if m is None:
        raise TaskConfigError(
            f"no shards registered for task {store.task_name!r} under {store.output_dir} "
            f"({store.manifest_path} is missing); run `llm-infer --plan_only ...` or the "
            f"{store.task_name}_register_shards job first"
        )
    return m


def unrecorded_digests(manifest: ShardManifest, recorded: dict[str, str]) -> dict[str, str]:
    """Shard key -> its rows' digest, for every shard whose digest is not the one in ``recorded``.

    ``recorded``: shard key -> the input data version last recorded for it (orchestration reads it from
    Dagster). These are the observations still to record, whether the rows changed or a killed registration
    never recorded them.
    """
    return {k: s.digest for k, s in manifest.shards.items() if s.digest and recorded.get(k) != s.digest}


def save_manifest(store: TaskStore, manifest: ShardManifest) -> None:
    """Write ``shards.json`` and give new shards their seed-layout numbers (old ones keep theirs)."""
    manifest.save(store)
    # Seed-layout numbers follow the shard order: new shards take the next ones, old ones keep theirs.
    store.number_shards(
        list(manifest.shards), about={k: {"file": s.file, "rows": s.rows} for k, s in manifest.shards.items()}
    )


def delete_results_for_recut(store: TaskStore, old_keys: Iterable[str]) -> None:
    """Delete every result of the task's shards, before they are re-cut at another shard size.

    A re-cut key names other rows, so nothing made from the old shards may survive it. Removes, for each of
    ``old_keys``, its seed-layout results (``results/infer``, ``results/extract``, ``results/text``), its
    ``logs/tasks`` log and its ``logs/completions`` marker; then the task's Parquet folders (``<task>/raw``,
    ``prompts``, ``completions``, ``answers``) and every named model's (``<task>/models``). ``shards.json`` and
    the seed index are kept (:func:`save_manifest` rewrites them); Dagster's records are orchestration's to wipe.
    """
    for key in old_keys:
        for kind in ("infer", "extract", "text"):
            store.result_path(kind, key).unlink(missing_ok=True)
        store.shard_log_path(key).unlink(missing_ok=True)
        store.marker_path(key).unlink(missing_ok=True)  # "inference done" would be false once its results go
    for asset in ASSETS:
        remove_tree(store.task_dir / asset)
    remove_tree(store.task_dir / "models")
