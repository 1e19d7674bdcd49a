"""Where a task's shards live on disk, written atomically so a finished shard is never half-written.

Layout under the output dir (``LLM_INFER_OUTPUT`` / ``--output_path``)::

    <task>/shards.json                    the shard manifest (file -> rows, shard -> row range)
    <task>/<asset>/<shard>.parquet        raw, prompts, completions, answers
    results/infer/<NNNNN>.json            the seed's layout, for existing downstream scripts: numbered by
    results/extract/<NNNNN>.json          shard (results/index.json maps number -> task, shard, rows)
    results/text/<NNNNN>.txt              (with save_text)
    logs/tasks/<NNNNN>.log                one log per shard, as the seed had
    logs/completions/<NNNNN>              the seed's marker: the shard's inference is done
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.shards.seed_index import SeedIndex
from llm_infer_dagster.shards.sharding import is_shard_key
from llm_infer_dagster.shards.tables import ASSETS
from llm_infer_dagster.tasks.task_settings import MODEL_NAME_RE


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temp file next to ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; results are shared like any written file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, default=str))


def check_output_dir(path: Path) -> None:
    """Create the output dir and write and remove a probe file in it; SettingsError (one line) if that fails.

    Run before any model loads, so a path under a regular file or a read-only folder is refused at once
    instead of as a traceback when the first shard is written.
    """
    path = Path(path)
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


class TaskStore:
    """Paths and atomic reads/writes for one task's shards under one output dir."""

    def __init__(self, output_dir: str | Path, task_name: str, id_length: int = 5) -> None:
        self.output_dir = Path(output_dir).resolve()
        self.task_name = task_name
        self.id_length = id_length  # digits of the seed layout's numbers (the seed's --id_length)
        self.index = SeedIndex(self.output_dir)
        self._numbers: dict[str, int] | None = None
        self.task_dir = self.output_dir / task_name
        if task_name in ("", ".", "..") or self.task_dir.resolve().parent != self.output_dir:
            raise ValueError(f"task name {task_name!r} would leave the output dir {self.output_dir}")

    @staticmethod
    def _check_key(key: str) -> str:
        if not is_shard_key(key):
            raise ValueError(f"{key!r} is not a shard key made by llm-infer-dagster; refusing to build a path")
        return key

    @property
    def manifest_path(self) -> Path:
        return self.task_dir / "shards.json"

    def shard_path(self, asset: str, key: str, model: str | None = None) -> Path:
        """``<task>/<asset>/<key>.parquet``; a named model's shards: ``<task>/models/<model>/<asset>/...``."""
        if asset not in ASSETS:
            raise ValueError(f"unknown asset {asset!r}; one of {ASSETS}")
        if model is None:
            return self.task_dir / asset / f"{self._check_key(key)}.parquet"
        if not MODEL_NAME_RE.fullmatch(model):
            raise ValueError(f"{model!r} is not a model name; refusing to build a path")
        return self.task_dir / "models" / model / asset / f"{self._check_key(key)}.parquet"

    def write_frame(self, asset: str, key: str, df: pl.DataFrame, model: str | None = None) -> Path:
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
        return pl.read_parquet(path)

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

    def result_path(self, kind: str, key: str) -> Path:
        if kind not in ("infer", "extract", "text"):
            raise ValueError(f"unknown result kind {kind!r}")
        suffix = ".txt" if kind == "text" else ".json"
        return self.output_dir / "results" / kind / f"{self.number(key)}{suffix}"

    def shard_log_path(self, key: str) -> Path:
        return self.output_dir / "logs" / "tasks" / f"{self.number(key)}.log"

    def marker_path(self, key: str) -> Path:
        """The seed's empty marker of a task whose inference is done (``logs/completions/<NNNNN>``)."""
        return self.output_dir / "logs" / "completions" / self.number(key)

    def lease_path(self, key: str) -> Path:
        """The lock file of the shard's lease (see locks.py)."""
        return self.task_dir / ".leases" / f"{self._check_key(key)}.lock"

    def log_shard(self, key: str, message: str) -> None:
        """Append one line to the shard's seed-style log."""
        path = self.shard_log_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        with path.open("a", encoding="utf-8") as f:
            f.write(f"{stamp} [{self.task_name}] {message}\n")
