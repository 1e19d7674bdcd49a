"""An output folder of the original llm-infer (the seed) is refused, never written over. No Dagster.

The seed and this platform write the same numbered files (``results/infer/00000.json``,
``logs/completions/00000``, ``args.json``), but the seed's task ``00000`` is its first ``ceil(N / --tasks)``
rows of all files, while this platform's shard ``00000`` is the first chunk of one file: running here in a
seed folder would replace the seed's results with other rows' results. Its rows are not adopted: the seed
recorded neither the rows of a task nor the model or sampling that made it, so nothing could say that a seed
file holds what a shard here would hold. The folder is refused before anything is written to it (no
``logs/main.log``, no instance), with one line saying what was found and what to do.

A folder is the seed's when it holds the seed's results or done markers and none of this platform's own
records: ``results/index.json`` (written when shards are registered, before any result), a task manifest
``<task>/shards.json``, a Dagster instance ``.dagster``, or an ``args.json`` with this platform's flags.
"""

from __future__ import annotations

import json
from pathlib import Path

from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.shards.storage import RemotePath, StorePath

#: Where the seed put its per-task files, and what this message calls them.
SEED_FILES = (
    (("results", "infer"), "results/infer file{s}"),
    (("results", "extract"), "results/extract file{s}"),
    (("results", "text"), "results/text file{s}"),
    (("logs", "completions"), "done marker{s} in logs/completions"),
    (("logs", "tasks"), "task log{s} in logs/tasks"),
)
#: Flags the seed never had: an args.json with one of them was written here.
OWN_ARGS = ("shard_size", "plan_only", "redo_shrunk")


def _files(folder: StorePath) -> list[str]:
    """Names of the (non-hidden) files in ``folder``; none when it is not a folder."""
    try:
        if isinstance(folder, RemotePath):
            entries = folder.fs.ls(folder.path, detail=True)
            names = [str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file"]
        else:
            names = [p.name for p in Path(folder).iterdir() if p.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if not n.startswith("."))


def _is_dir(path: StorePath) -> bool:
    return bool(path.fs.isdir(path.path)) if isinstance(path, RemotePath) else Path(path).is_dir()


def _own_args(path: StorePath) -> bool:
    try:
        args = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(args, dict) and any(k in args for k in OWN_ARGS)


def has_own_records(output: StorePath) -> bool:
    """Whether this platform has written to ``output`` (see the module's docstring)."""
    if (output / "results" / "index.json").is_file() or _is_dir(output / ".dagster"):
        return True
    if isinstance(output, RemotePath):
        subdirs = [output / e["name"].rstrip("/").rsplit("/", 1)[-1]
                   for e in output.fs.ls(output.path, detail=True) if e.get("type") == "directory"]  # fmt: skip
    else:
        subdirs = [d for d in Path(output).iterdir() if d.is_dir()]
    return any((d / "shards.json").is_file() for d in subdirs) or _own_args(output / "args.json")


def seed_results(output: StorePath) -> str | None:
    """What of the seed's ``output`` holds (``args.json, 12 results/infer files, ...``), or None.

    None when ``output`` is missing, holds none of the seed's results or done markers, or is this platform's.
    """
    if not _is_dir(output):
        return None
    found = [
        f"{len(names)} {what.format(s='' if len(names) == 1 else 's')}"
        for parts, what in SEED_FILES
        if (names := _files(_join(output, parts)))
    ]
    if not found or has_own_records(output):
        return None
    if (output / "args.json").is_file():
        found.insert(0, "args.json")
    return ", ".join(found)


def refuse_seed_folder(output: StorePath) -> None:
    """SettingsError (one line) when ``output`` holds the original llm-infer's results; nothing is written."""
    found = seed_results(output)
    if found is None:
        return
    raise SettingsError(
        f"{output} holds results of the original llm-infer ({found}) and none of llm-infer-dagster's records "
        "(results/index.json, .dagster): its task numbers are not this tool's shards, so running here would "
        f"overwrite them; nothing was changed. Pass a new --output_path, or move args.json, results/ and logs/ "
        f"out of {output} first"
    )


def _join(base: StorePath, parts: tuple[str, ...]) -> StorePath:
    for part in parts:
        base = base / part
    return base
