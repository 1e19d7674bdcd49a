"""The input asset's shard table, as Dagster metadata (each shard's own metadata: ``pipeline/stream.py``)."""

from __future__ import annotations

import os

from dagster import MetadataValue

from llm_infer_dagster.shards.manifest import ShardManifest


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
