"""Numbers for the seed's layout: ``results/infer/00000.json``, ``logs/tasks/00000.log``, ``logs/completions/00000``.

The seed named its outputs by task id, zero-padded to ``--id_length``; downstream scripts open ``00000.json``.
Here a shard gets the next free number when it is registered (so numbers follow the task's shard order), and
keeps it for good: data that grows adds numbers, never renumbers. ``results/index.json`` maps each number to its
task, shard key and rows, for people and scripts; one output dir can hold several tasks without collisions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from llm_infer_dagster.shards.locks import file_lock
from llm_infer_dagster.shards.storage import StorePath


class SeedIndex:
    """The numbers of every shard of every task under one output dir (``results/index.json``)."""

    def __init__(self, output_dir: StorePath, state_dir: Path | None = None) -> None:
        self.path = output_dir / "results" / "index.json"
        # a local lock: on a URL output dir, registrations of one index are serialized on one host only
        self._lock = (state_dir or Path(str(output_dir))) / "results" / ".index.lock"

    def _load(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return list(json.loads(self.path.read_text(encoding="utf-8"))["entries"])

    def numbers(self, task: str) -> dict[str, int]:
        """Shard key -> number, for one task."""
        return {e["shard"]: int(e["id"]) for e in self._load() if e["task"] == task}

    def assign(
        self, task: str, keys: Iterable[str], about: Mapping[str, Mapping[str, Any]] | None = None
    ) -> dict[str, int]:
        """Numbers for ``keys`` (in order), giving the next free ones to keys that have none yet.

        ``about``: shard key -> what the index says of it (file, rows), refreshed for known keys too.
        """
        from llm_infer_dagster.shards.store import atomic_write_json  # store imports this module

        wanted = list(keys)
        with file_lock(self._lock):
            entries = self._load()
            by_key = {(e["task"], e["shard"]): e for e in entries}
            changed = False
            for key in wanted:
                entry = by_key.get((task, key))
                if entry is None:
                    entry = {"id": len(entries), "task": task, "shard": key}
                    entries.append(entry)
                    by_key[(task, key)] = entry
                    changed = True
                if about and key in about and any(entry.get(k) != v for k, v in about[key].items()):
                    entry.update(about[key])
                    changed = True
            if changed:
                atomic_write_json(self.path, {"entries": entries})
        return {k: int(by_key[(task, k)]["id"]) for k in wanted}
