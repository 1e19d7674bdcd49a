"""Where a task's shards live on disk, written atomically so a finished shard is never half-written.

Layout under the output dir (``LLM_INFER_OUTPUT`` / ``--output_path``)::

    <task>/shards.json                    the shard manifest (file -> rows, shard -> row range)
    <task>/<asset>/<shard>.parquet        raw, prompts, completions, answers
    results/infer/<NNNNN>.json            the seed's layout, for existing downstream scripts: numbered by
    results/extract/<NNNNN>.json          shard (results/index.json maps number -> task, shard, rows)
    results/text/<NNNNN>.txt              (with save_text)
    logs/tasks/<NNNNN>.log                one log per shard, as the seed had
    logs/completions/<NNNNN>              the seed's marker: the shard's inference is done

The output dir may be an fsspec URL (``s3://bucket/run``): see ``storage.py``. Leases, locks and the logs
written line by line then live in a local state dir (``state_dir``), the rest in the URL.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.shards.seed_index import SeedIndex
from llm_infer_dagster.shards.sharding import is_shard_key
from llm_infer_dagster.shards.storage import (
    RemotePath,
    StorePath,
    atomic_write,
    read_parquet,
    state_dir_for,
    store_path,
    sweep_stale_temps,
)
from llm_infer_dagster.shards.tables import ASSETS
from llm_infer_dagster.tasks.task_settings import MODEL_NAME_RE


def atomic_write_text(path: StorePath, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: StorePath, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, default=str))


def check_output_dir(location: str | os.PathLike[str] | StorePath) -> None:
    """Create the output dir and write and remove a probe file in it; SettingsError (one line) if that fails.

    Run before any model loads, so a path under a regular file or a read-only folder (or a URL whose bucket
    is missing or whose credentials cannot write) is refused at once instead of as a traceback when the first
    shard is written.
    """
    target = location if isinstance(location, RemotePath | Path) else store_path(location)
    if isinstance(target, RemotePath):
        _check_remote_output_dir(target)
        return
    path = target
    fix = "pass another --output_path / LLM_INFER_OUTPUT"
    for folder in (path, *path.parents):
        if folder.exists():
            if folder.is_dir():
                break
            if folder == path:
                raise SettingsError(f"output dir {path} is a file, not a folder; {fix}")
            raise SettingsError(f"output dir {path} cannot be created: {folder} is a file, not a folder; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(
            f"output dir {path} cannot be created ({exc.strerror or exc}); {fix}, or make its parent writable"
        ) from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".llm-infer-probe.", suffix=".tmp")
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise SettingsError(
            f"output dir {path} is not writable ({exc.strerror or exc}); {fix}, or make it writable "
            "(its owner and mode, or a read-only mount)"
        ) from None


def _check_remote_output_dir(url: RemotePath) -> None:
    if "memory" in (url.fs.protocol if isinstance(url.fs.protocol, tuple) else (url.fs.protocol,)):
        raise SettingsError(
            f"output dir {url} is fsspec's in-process memory filesystem: the engine workers and Dagster's step "
            "processes cannot see it; pass a local folder or a shared URL (s3://..., file:///mnt/...)"
        )
    probe = url / f".llm-infer-probe.{os.getpid()}.tmp"
    try:
        atomic_write_text(probe, "probe")
        probe.unlink(missing_ok=True)
    except Exception as exc:  # fsspec backends raise their own errors (botocore's, PermissionError, ...)
        raise SettingsError(
            f"output dir {url} is not writable ({type(exc).__name__}: {str(exc).strip()[:300]}); check that the "
            "bucket exists and the credentials can write to it (AWS_* variables, AWS_ENDPOINT_URL for an "
            "S3-compatible server), or pass another --output_path / LLM_INFER_OUTPUT"
        ) from None


class TaskStore:
    """Paths and atomic reads/writes for one task's shards under one output dir."""

    def __init__(
        self,
        output_dir: str | os.PathLike[str] | StorePath,
        task_name: str,
        id_length: int = 5,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        location = output_dir if isinstance(output_dir, RemotePath) else store_path(output_dir)
        self.output_dir: StorePath = location if isinstance(location, RemotePath) else location.resolve()
        #: local: leases, locks, worker and shard logs (the output dir itself unless that is a URL, see
        #: ``storage.state_dir_for``; ``state_dir`` is the deployment's base folder for those)
        self.state_dir = state_dir_for(self.output_dir, state_dir)
        self.task_name = task_name
        self.id_length = id_length  # digits of the seed layout's numbers (the seed's --id_length)
        self.index = SeedIndex(self.output_dir, self.state_dir)
        self._numbers: dict[str, int] | None = None
        if task_name in ("", ".", "..") or "/" in task_name or os.sep in task_name:
            raise ValueError(f"task name {task_name!r} would leave the output dir {self.output_dir}")
        self.task_dir: StorePath = self.output_dir / task_name
        if isinstance(self.task_dir, Path) and self.task_dir.resolve().parent != self.output_dir:
            raise ValueError(f"task name {task_name!r} would leave the output dir {self.output_dir}")

    @staticmethod
    def _check_key(key: str) -> str:
        if not is_shard_key(key):
            raise ValueError(f"{key!r} is not a shard key made by llm-infer-dagster; refusing to build a path")
        return key

    def sweep_stale_temps(self) -> int:
        """Remove what writers that crashed on this host left mid-write (see ``storage.sweep_stale_temps``)."""
        out = self.output_dir
        return sweep_stale_temps([self.task_dir, out / "results", out / "logs"]) + sweep_stale_temps(
            [out], recursive=False
        )

    @property
    def manifest_path(self) -> StorePath:
        return self.task_dir / "shards.json"

    def shard_path(self, asset: str, key: str, model: str | None = None) -> StorePath:
        """``<task>/<asset>/<key>.parquet``; a named model's shards: ``<task>/models/<model>/<asset>/...``."""
        if asset not in ASSETS:
            raise ValueError(f"unknown asset {asset!r}; one of {ASSETS}")
        if model is None:
            return self.task_dir / asset / f"{self._check_key(key)}.parquet"
        if not MODEL_NAME_RE.fullmatch(model):
            raise ValueError(f"{model!r} is not a model name; refusing to build a path")
        return self.task_dir / "models" / model / asset / f"{self._check_key(key)}.parquet"

    def write_frame(self, asset: str, key: str, df: pl.DataFrame, model: str | None = None) -> StorePath:
        path = self.shard_path(asset, key, model)
        atomic_write(path, lambda tmp: df.write_parquet(tmp))
        return path

    def read_frame(self, asset: str, key: str, model: str | None = None) -> pl.DataFrame:
        path = self.shard_path(asset, key, model)
        if not path.is_file():
            raise FileNotFoundError(
                f"{asset} of shard {key} is not on disk at {path}; materialize {self.task_name}/{asset} "
                "for this shard first"
            )
        return read_parquet(path)

    def has(self, asset: str, key: str, model: str | None = None) -> bool:
        return self.shard_path(asset, key, model).is_file()

    # The seed's layout: files named by the shard's number (seed_index.py), not its key.
    def number(self, key: str) -> str:
        """The shard's seed-layout number, zero-padded (``00000``); a shard without one gets the next free one."""
        self._check_key(key)
        if self._numbers is None:
            self._numbers = self.index.numbers(self.task_name)
        if key not in self._numbers:
            self._numbers.update(self.index.assign(self.task_name, [key]))
        return f"{self._numbers[key]:0{self.id_length}d}"

    def number_shards(self, keys: list[str], about: dict[str, dict[str, Any]] | None = None) -> None:
        """Give ``keys`` (in the task's shard order) their numbers now, so numbers follow that order."""
        self._numbers = {**self.index.numbers(self.task_name), **self.index.assign(self.task_name, keys, about)}

    def result_path(self, kind: str, key: str) -> StorePath:
        if kind not in ("infer", "extract", "text"):
            raise ValueError(f"unknown result kind {kind!r}")
        suffix = ".txt" if kind == "text" else ".json"
        return self.output_dir / "results" / kind / f"{self.number(key)}{suffix}"

    def shard_log_path(self, key: str) -> Path:
        """The shard's seed-style log, appended line by line: in the state dir (the output dir when local)."""
        return self.state_dir / "logs" / "tasks" / f"{self.number(key)}.log"

    def marker_path(self, key: str) -> StorePath:
        """The seed's empty marker of a task whose inference is done (``logs/completions/<NNNNN>``)."""
        return self.output_dir / "logs" / "completions" / self.number(key)

    def lease_path(self, key: str) -> Path:
        """The lock file of the shard's lease (see locks.py)."""
        return self.state_dir / self.task_name / ".leases" / f"{self._check_key(key)}.lock"

    @property
    def register_lock_path(self) -> Path:
        """The lock two commands registering this task's shards at once take in turn (see registry.py)."""
        return self.state_dir / self.task_name / ".register.lock"

    @property
    def worker_log_dir(self) -> Path:
        """Where each run's engine workers write their logs (``<dir>/<run id>/worker-N.log``)."""
        return self.state_dir / "logs" / "workers"

    def log_shard(self, key: str, message: str) -> None:
        """Append one line to the shard's seed-style log."""
        path = self.shard_log_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        with path.open("a", encoding="utf-8") as f:
            f.write(f"{stamp} [{self.task_name}] {message}\n")
