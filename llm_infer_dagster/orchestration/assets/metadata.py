"""Small helpers for the Dagster metadata every shard reports (counts, rates, a preview table)."""

from __future__ import annotations

import os
import re
from typing import Any

import polars as pl
from dagster import MetadataValue

from llm_infer_dagster.shards.manifest import ShardManifest


def preview(df: pl.DataFrame, columns: list[str], rows: int = 5, width: int = 80) -> MetadataValue:
    """The first rows as a markdown table, long cells cut, so a person can eyeball a shard in the UI."""

    def cell(v: Any) -> str:
        s = "" if v is None else str(v)
        s = s.replace("\n", " ").replace("|", "\\|")
        return s if len(s) <= width else s[: width - 1] + "…"

    cols = [c for c in columns if c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.head(rows).select(cols).iter_rows():
        lines.append("| " + " | ".join(cell(v) for v in r) + " |")
    return MetadataValue.md("\n".join(lines))


_NUMBER = re.compile(r"\d+")


def error_summary(errors: list[str | None], limit: int = 3) -> str:
    """The most common causes with counts, for logs and the CLI's last line.

    Errors that differ only in their numbers ("prompt has 3100 tokens" / "... 2900 tokens") are one cause,
    shown with the first message seen.
    """
    counts: dict[str, int] = {}
    shown: dict[str, str] = {}
    for e in errors:
        if e:
            head = e.splitlines()[0][:200]
            cause = _NUMBER.sub("#", head)
            counts[cause] = counts.get(cause, 0) + 1
            shown.setdefault(cause, head)
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return "; ".join(f"{n}x {shown[cause]}" for cause, n in top)


def shard_table(manifest: ShardManifest | None, manifest_path: str, limit: int = 500) -> dict[str, MetadataValue]:
    """The task's shard -> file and row range table (as of the code location's load), for the input asset."""
    if manifest is None:
        return {"shards_json": MetadataValue.path(manifest_path)}
    lines = ["| # | shard | file | rows |", "|---|---|---|---|"]
    for n, s in enumerate(list(manifest.shards.values())[:limit]):
        lines.append(f"| {n} | `{s.key}` | {os.path.basename(s.file)} (chunk {s.chunk}) | {s.start}..{s.stop} |")
    if len(manifest.shards) > limit:
        lines.append(f"| ... | {len(manifest.shards) - limit} more | see shards_json | |")
    return {
        "shards": MetadataValue.int(len(manifest.shards)),
        "shard_table": MetadataValue.md("\n".join(lines)),
        "shards_json": MetadataValue.path(manifest_path),
    }
