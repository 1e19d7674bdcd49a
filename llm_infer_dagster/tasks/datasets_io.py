"""The rows of a task.yaml's ``dataset``: which files hold them, how many rows each has, a shard's rows and digest.

Three kinds of dataset, all reduced to a list of files so shards, resume and staleness work as for any task:

- a file or folder of Parquet / JSONL / CSV files, read with polars (a Parquet file's row count is its footer);
- a ``datasets.save_to_disk`` folder (``state.json`` + ``dataset_info.json`` + ``data-*.arrow``), or a
  ``DatasetDict`` folder (``dataset_dict.json`` + one such folder per split): its ``.arrow`` files, in
  ``state.json``'s order, memory-mapped with pyarrow: a row count reads only the Arrow batch headers;
- a hub dataset name (``owner/name``, optional config ``name`` and ``split``) that is not a local path:
  ``datasets.load_dataset`` downloads it into the HF cache as ``.arrow`` files, read like the above.

pyarrow and ``datasets`` come with the ``datasets`` extra and are imported only for the last two kinds; without
them, those refuse in one line naming the extra. A shard's data version is a digest of its rows' JSON lines
(polars), whatever the kind: an edited row makes exactly its shard stale.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from llm_infer_dagster.errors import TaskConfigError

__all__ = [
    "ARROW_SUFFIX",
    "DATA_SUFFIXES",
    "RowWindow",
    "count_rows",
    "hub_files",
    "is_hub_name",
    "list_data_files",
    "read_rows",
    "schema_columns",
    "shard_digests",
]

#: File suffix -> polars format name. A plain folder's files of other suffixes are ignored.
DATA_SUFFIXES = {".parquet": "parquet", ".jsonl": "ndjson", ".ndjson": "ndjson", ".csv": "csv"}
#: The files of a save_to_disk folder or a hub dataset's cache (Arrow IPC streams).
ARROW_SUFFIX = ".arrow"
#: Rows per read when digesting shards: bounds memory whatever the file's size.
DIGEST_BLOCK_ROWS = 65_536
EXTRA_HINT = "pip install 'llm-infer-dagster[datasets]'"
_KINDS = " / ".join(DATA_SUFFIXES)
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _pyarrow(what: str) -> Any:
    """pyarrow, or one line saying which extra brings it (what: the dataset that needs it)."""
    try:
        import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise TaskConfigError(
            f"{what} needs the datasets extra (pyarrow), which is not installed; {EXTRA_HINT}"
        ) from None
    return pa


def _datasets(what: str) -> Any:
    """HF ``datasets``, or one line saying which extra brings it."""
    try:
        import datasets  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise TaskConfigError(f"{what} needs the datasets extra, which is not installed; {EXTRA_HINT}") from None
    return datasets


# -- listing the files ---------------------------------------------------------------------------------------------


def is_save_to_disk(path: Path) -> bool:
    """A ``Dataset.save_to_disk`` folder."""
    return path.is_dir() and (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def is_dataset_dict(path: Path) -> bool:
    """A ``DatasetDict.save_to_disk`` folder: one save_to_disk folder per split."""
    return path.is_dir() and (path / "dataset_dict.json").is_file()


def is_hub_name(text: str) -> bool:
    """``owner/name``: what a hub dataset is called (only tried when no local path has that name)."""
    return bool(_HUB_NAME.fullmatch(text)) and ".." not in text


def _saved_files(root: Path, split: str | None, source: str, prefix: str) -> list[str]:
    """The ``.arrow`` files of a save_to_disk (or DatasetDict) folder, in the dataset's row order."""
    where = f"{source}: {prefix}dataset.path {str(root)!r}"
    if is_dataset_dict(root):
        try:
            splits = [str(s) for s in json.loads((root / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TaskConfigError(f"{where}: dataset_dict.json is not readable ({exc})") from None
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in splits:
            given = f"split {split!r} is not one of its splits" if split else "is a DatasetDict folder;"
            given += "" if split else f" set {prefix}dataset.split"
            raise TaskConfigError(f"{where} {given} (splits: {', '.join(splits)})")
        root = root / split
        split = None  # chosen by the folder
        where = f"{source}: {prefix}dataset.path {str(root)!r}"
        if not is_save_to_disk(root):
            raise TaskConfigError(f"{where} has no state.json and dataset_info.json; save the split again")
    try:
        state = json.loads((root / "state.json").read_text(encoding="utf-8"))
        names = [str(f["filename"]) for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TaskConfigError(f"{where}: state.json is not a save_to_disk state ({exc})") from None
    saved = state.get("_split")
    if split is not None and saved is not None and str(saved) != split:
        raise TaskConfigError(f"{where} holds split {saved!r}, not {prefix}dataset.split {split!r}; fix either")
    files = [root / n for n in names]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise TaskConfigError(f"{where}: state.json names {missing[0].name}, which is missing; save the dataset again")
    if not files:
        raise TaskConfigError(f"{where}: state.json names no data files")
    _pyarrow(f"{where} (a datasets.save_to_disk folder)")
    return [str(f) for f in files]


def list_data_files(root: Path, split: str | None, source: str | Path, prefix: str = "") -> list[str]:
    """The data files under ``root`` (itself when it is a file), in row order; refuses what it cannot read.

    ``source``: the file declaring the dataset; ``prefix``: where its keys sit in it (``attributes.``).
    """
    if is_save_to_disk(root) or is_dataset_dict(root):
        return _saved_files(root, split, str(source), prefix)
    if root.is_file():
        if root.suffix.lower() not in (*DATA_SUFFIXES, ARROW_SUFFIX):
            raise TaskConfigError(f"{source}: {prefix}dataset.path {str(root)!r} is not a {_KINDS} file")
        if root.suffix.lower() == ARROW_SUFFIX:
            _pyarrow(f"{source}: {prefix}dataset.path {str(root)!r} (an Arrow file)")
        return [str(root)]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    if split is not None:
        files = [
            p for p in files
            if split in p.relative_to(root).parts[:-1] or re.match(rf"{re.escape(split)}([-_.]|$)", p.name)
        ]  # fmt: skip
    if not files:
        which = f" of split {split!r}" if split else ""
        raise TaskConfigError(
            f"{source}: {prefix}dataset.path {str(root)!r} holds no {_KINDS} files{which}, and is no "
            "datasets.save_to_disk folder (state.json, dataset_info.json)"
        )
    return [str(p) for p in files]


def hub_files(
    name: str, config: str | None, split: str | None, source: str | Path, local: Path, prefix: str = ""
) -> list[str]:
    """A hub dataset's ``.arrow`` files in the HF cache, downloaded by ``datasets.load_dataset`` if need be.

    ``local``: the path that was looked for first (named in the message when the hub cannot give it either).
    """
    where = f"{source}: {prefix}dataset.path {name!r}"
    datasets = _datasets(f"{where} (a hub dataset)")
    try:
        loaded = datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        cfg = f", {config!r}" if config else ""
        spl = f", split={split!r}" if split else ""
        raise TaskConfigError(
            f"{where} is not a local path ({local} does not exist) and the hub did not give it ({why}); where the "
            f"hub is reachable run datasets.load_dataset({name!r}{cfg}{spl}).save_to_disk('<task folder>/data') and "
            f"set {prefix}dataset.path: data, or set HF_HUB_OFFLINE=1 with the dataset in the HF cache"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if len(splits) != 1:
            raise TaskConfigError(f"{where} has splits {', '.join(splits)}; set {prefix}dataset.split to one of them")
        loaded = loaded[splits[0]]
    files = [str(c["filename"]) for c in loaded.cache_files]
    if not files or loaded._indices is not None or sum(count_rows(f) for f in files) != loaded.num_rows:
        raise TaskConfigError(
            f"{where}: split {split!r} is not whole cached files (a slice like 'train[:100]'?); name a whole split"
        )
    return files


# -- reading one file ----------------------------------------------------------------------------------------------


def _is_arrow(path: str) -> bool:
    return Path(path).suffix.lower() == ARROW_SUFFIX


def _arrow_table(path: str) -> Any:
    """The file memory-mapped: no row is read until sliced and converted (an IPC stream, or an IPC file)."""
    pa = _pyarrow(f"reading {path}")
    source = pa.memory_map(path, "r")
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source).read_all()


def _scan(path: str) -> pl.LazyFrame:
    """A polars scan of a Parquet / JSONL / CSV file (Arrow files: :func:`_slicer`)."""
    kind = DATA_SUFFIXES[Path(path).suffix.lower()]
    if kind == "parquet":
        return pl.scan_parquet(path)
    if kind == "ndjson":
        return pl.scan_ndjson(path)
    return pl.scan_csv(path)


def schema_columns(path: str) -> list[str]:
    """A file's column names, from its metadata (Parquet, Arrow) or its first rows (JSONL, CSV)."""
    if _is_arrow(path):
        return list(_arrow_table(path).schema.names)
    return list(_scan(path).collect_schema().names())


def count_rows(path: str) -> int:
    """Rows in a file without making them: a Parquet footer, the Arrow batch headers, a Rust line scan for
    JSONL and CSV."""
    if _is_arrow(path):
        return int(_arrow_table(path).num_rows)
    return int(_scan(path).select(pl.len()).collect().item())


def read_rows(
    path: str, columns: Sequence[str] | None, start: int = 0, stop: int | None = None
) -> list[dict[str, Any]]:
    """Rows ``[start, stop)`` of the file (all by default) as dicts, keeping ``columns`` (all when None)."""
    if _is_arrow(path):
        table = _arrow_table(path)
        table = table.select(list(columns)) if columns else table
        n = table.num_rows - start if stop is None else max(stop - start, 0)
        rows: list[dict[str, Any]] = table.slice(start, n).to_pylist()
        return rows
    lf = _scan(path)
    lf = lf.select(columns) if columns else lf
    lf = lf.slice(start, None if stop is None else max(stop - start, 0))
    return lf.collect().to_dicts()


def _digest_frame(frame: pl.DataFrame, start: int, stop: int) -> str:
    h = hashlib.sha256(f"{start}:{stop}:".encode())
    if frame.height:
        h.update(frame.write_ndjson().encode())
    return h.hexdigest()[:24]


def _slicer(path: str, columns: Sequence[str] | None) -> Callable[[int, int], pl.DataFrame]:
    """``(start, length) -> those rows as a DataFrame``, reading only them (Arrow: a slice of the memory map)."""
    if _is_arrow(path):
        table = _arrow_table(path)
        table = table.select(list(columns)) if columns else table

        def arrow_rows(start: int, length: int) -> pl.DataFrame:
            frame = pl.from_arrow(table.slice(start, length))
            assert isinstance(frame, pl.DataFrame)
            return frame

        return arrow_rows
    lf = _scan(path)
    lf = lf.select(columns) if columns else lf
    return lambda start, length: lf.slice(start, length).collect()


def shard_digests(path: str, ranges: Sequence[tuple[int, int]], columns: Sequence[str] | None = None) -> list[str]:
    """The data version of each ``[start, stop)`` of the file: a digest of its rows' JSON lines, made in polars.

    Reads the file in blocks of :data:`DIGEST_BLOCK_ROWS` rows, so memory stays bounded on a large file.
    """
    rows = _slicer(path, columns)
    out: list[str] = []
    block: tuple[int, pl.DataFrame] | None = None
    for start, stop in ranges:
        if stop - start > DIGEST_BLOCK_ROWS or start >= stop:
            out.append(_digest_frame(rows(start, max(stop - start, 0)), start, stop))
            continue
        if block is None or not (block[0] <= start and stop <= block[0] + DIGEST_BLOCK_ROWS):
            block = (start, rows(start, DIGEST_BLOCK_ROWS))
        out.append(_digest_frame(block[1].slice(start - block[0], stop - start), start, stop))
    return out


class RowWindow(Sequence[dict[str, Any]]):
    """A file's rows, read only where sliced: its length is the file's row count, a slice reads just those rows.

    What the raw step reads a shard's rows through, so a shard of a 10M-row file costs its own rows, not the
    file's (``TaskConfig.shard_rows``).
    """

    def __init__(self, path: str, columns: Sequence[str] | None) -> None:
        self.path, self.columns = path, list(columns) if columns else None
        self._len: int | None = None

    def __len__(self) -> int:
        if self._len is None:
            self._len = count_rows(self.path)
        return self._len

    def __getitem__(self, index: Any) -> Any:
        if not isinstance(index, slice):
            return self[index : index + 1][0] if index >= 0 else self[len(self) + index]
        start, stop, step = index.indices(len(self))
        return read_rows(self.path, self.columns, start, max(stop, start))[::step]
