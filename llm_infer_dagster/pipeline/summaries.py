"""Pure summaries of a shard for people: the most common errors, and a preview table."""

from __future__ import annotations

import re
from typing import Any

import polars as pl

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


def preview_markdown(df: pl.DataFrame, columns: list[str], rows: int = 5, width: int = 80) -> str:
    """The first rows as a markdown table, long cells cut, so a person can eyeball a shard in the UI."""

    def cell(v: Any) -> str:
        s = "" if v is None else str(v)
        s = s.replace("\n", " ").replace("|", "\\|")
        return s if len(s) <= width else s[: width - 1] + "…"

    cols = [c for c in columns if c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.head(rows).select(cols).iter_rows():
        lines.append("| " + " | ".join(cell(v) for v in r) + " |")
    return "\n".join(lines)
