"""Pure sharding: input files and their row counts -> stable shard keys and row ranges.

A shard is a fixed-size chunk of rows *within one file*, keyed ``<file id>-<chunk number>``. Adding a file
adds shards; growing a file fills its partial last shard up to the shard size and puts the other new rows in
new shards. No key is ever renumbered. Each shard carries a digest of its rows: the data version of its input,
so a shard whose rows changed (grown, edited) shows as stale in Dagster and nothing else does.

The file id is what a person reads in Dagster's partition pickers, so it is short: a slug of the file's path
relative to the input root (``part_000_jsonl``, giving keys like ``part_000_jsonl-00003``), the same whatever
machine or folder the input lives in. Keys are per task (each task has its own partitions), so a slug only
has to be unique within its task; a file whose slug is taken (``a-b.jsonl`` after ``a_b.jsonl``, or two long
paths cut to the same 40 characters) gets the hashed id :func:`file_id` instead, which is also the id every
file had in manifests written before readable ids (those keep their ids: :func:`assign_file_ids`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

SHARD_KEY_RE = re.compile(r"^[a-z0-9_]{1,40}(-[0-9a-f]{8})?-[0-9]{5,}$")
SLUG_CHARS = 40
DEFAULT_SHARD_SIZE = 512


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of ``file``."""

    key: str
    file: str
    file_id: str
    chunk: int
    start: int
    stop: int
    digest: str = ""  # of the rows it holds (see rows_digest); "" in manifests written before digests

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def relative_name(path: str, roots: Sequence[str | Path]) -> str:
    """``path`` relative to the first root that contains it, else the absolute path."""
    p = Path(path).resolve()
    for root in roots:
        try:
            return p.relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            continue
    return p.as_posix()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def file_id(task: str, rel_path: str) -> str:
    """The hashed id of one input file of one task: ``<file name slug>-<8 hex>``, unique across tasks.

    Given to a file whose readable id is taken, and the id of every file in manifests written before
    readable ids.
    """
    slug = _slug(Path(rel_path).name)[:SLUG_CHARS] or "file"
    digest = hashlib.sha1(f"{task}\0{rel_path}".encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


def readable_file_id(rel_path: str) -> str:
    """The id a person reads: the slug of the path relative to the input root, its last 40 characters."""
    return _slug(rel_path)[-SLUG_CHARS:].strip("_") or "file"


def assign_file_ids(task: str, rel_paths: Sequence[str], known: dict[str, str]) -> list[str]:
    """The id of each of ``rel_paths``; ``known`` maps an id already in the task's manifest to its path.

    A file keeps the id it has (by its relative path; for a manifest written before readable ids, by its
    hashed id); a new file gets its readable id, or its hashed id when another file holds the readable one.
    A path listed twice gets one id.
    """
    by_path = {rel: fid for fid, rel in known.items() if rel}
    taken = set(known)
    out: list[str] = []
    for rel in rel_paths:
        hashed = file_id(task, rel)
        if rel in by_path:
            fid = by_path[rel]
        elif hashed in known:
            fid = hashed
        else:
            readable = readable_file_id(rel)
            fid = hashed if readable in taken else readable
        by_path[rel] = fid
        taken.add(fid)
        out.append(fid)
    return out


def shard_key(fid: str, chunk: int) -> str:
    return f"{fid}-{chunk:05d}"


def is_shard_key(key: str) -> bool:
    """True for keys this module makes; anything else must not become a file name."""
    return bool(SHARD_KEY_RE.fullmatch(key))


def shard_size_for_tasks(total_rows: int, tasks: int) -> int:
    """The seed's ``--tasks N``: the shard size that cuts the data into about N shards."""
    if tasks < 1:
        raise ValueError(f"--tasks must be >= 1, got {tasks}")
    return max(1, math.ceil(total_rows / tasks))


def plan_file_shards(path: str, fid: str, rows: int, shard_size: int) -> list[Shard]:
    """The shards of one file with ``rows`` rows."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    return [
        Shard(shard_key(fid, c), path, fid, c, c * shard_size, min(rows, (c + 1) * shard_size))
        for c in range(math.ceil(rows / shard_size))
    ]


def grow_file_shards(existing: Sequence[Shard], path: str, rows: int, shard_size: int) -> list[Shard]:
    """The shards of a file that already has ``existing`` shards and now has ``rows`` rows.

    A partial last shard is extended up to ``shard_size`` (its digest then changes, so Dagster shows it stale);
    further rows go to new shards numbered after the old ones. Earlier shards keep their ranges.
    """
    out = sorted(existing, key=lambda s: s.chunk)
    if not out:
        raise ValueError("grow_file_shards needs the file's existing shards; use plan_file_shards")
    out = [replace(s, file=path) for s in out]
    fid, last = out[-1].file_id, out[-1]
    end = last.stop
    if last.rows < shard_size and rows > end:
        end = min(rows, last.start + shard_size)
        out[-1] = replace(last, stop=end)
    chunk = last.chunk + 1
    while end < rows:
        stop = min(rows, end + shard_size)
        out.append(Shard(shard_key(fid, chunk), path, fid, chunk, end, stop))
        chunk, end = chunk + 1, stop
    return out


def trim_to_rows(shards: Sequence[Shard], rows: int) -> list[Shard]:
    """``shards`` of one file cut back to a file that now has ``rows`` rows (an explicit ``--rerun`` only).

    Shards past the new end become empty at ``rows``, so a file that grows again extends the last one from
    there and no row is left without a shard. Keys never change.
    """
    return [replace(s, start=min(s.start, rows), stop=min(s.stop, rows)) for s in shards]


def row_digest(row_json: str) -> bytes:
    """Digest of one row (its JSON), kept per row so shard digests need no second read of the file."""
    return hashlib.sha256(row_json.encode()).digest()


def rows_digest(row_digests: Sequence[bytes], start: int, stop: int) -> str:
    """The data version of rows ``[start, stop)``: their count and content. Rows past the end count as absent."""
    h = hashlib.sha256(f"{start}:{stop}:".encode())
    for d in row_digests[start:stop]:
        h.update(d)
    return h.hexdigest()[:24]


def with_digests(shards: Iterable[Shard], row_digests: Sequence[bytes]) -> list[Shard]:
    """``shards`` of one file with their digests computed from that file's per-row digests."""
    return [replace(s, digest=rows_digest(row_digests, s.start, s.stop)) for s in shards]


def plan_shards(files: Iterable[tuple[str, str, int]], shard_size: int) -> list[Shard]:
    """All shards, in file order then chunk order, for ``(path, file_id, row_count)`` triples."""
    shards: list[Shard] = []
    for path, fid, rows in files:
        shards.extend(plan_file_shards(path, fid, rows, shard_size))
    return shards


def contiguous_ranges(ordered_keys: Sequence[str], wanted: Iterable[str]) -> list[tuple[str, str]]:
    """Group ``wanted`` keys into (first, last) runs of consecutive keys in ``ordered_keys``.

    A Dagster run covers a partition *range*; this turns "the shards still missing" into as few runs as possible.
    """
    wanted_set = set(wanted)
    ranges: list[tuple[str, str]] = []
    start: str | None = None
    prev: str | None = None
    for key in ordered_keys:
        if key in wanted_set:
            if start is None:
                start = key
            prev = key
        elif start is not None:
            ranges.append((start, prev))  # type: ignore[arg-type]
            start = None
    if start is not None:
        ranges.append((start, prev))  # type: ignore[arg-type]
    return ranges
