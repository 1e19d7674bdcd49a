"""Per-shard quality checks: shares of bad rows in a shard's completions and answers, judged by thresholds.

No Dagster: each function takes the shard's frames and the task's ``checks`` settings
(``tasks/task_settings.py``) and returns plain :class:`CheckResult` values; ``orchestration/assets/pipeline.py``
turns them into Dagster asset check evaluations, one per check and shard.

What each share counts, and over which rows (its ``rows``):

- ``error_rows``: rows with an ``error`` (a prompt that failed or was too long, an engine error), over all rows.
- ``empty_completions``: rows whose first response is empty or whitespace, over the rows without an error.
- ``cut_at_max_tokens``: rows whose first ``finish_reason`` is ``"length"`` (stopped by ``max_tokens`` or the
  context), over the rows without an error.
- For a pooling task (``embed``, ``classify``, ``reward``: no text) ``empty_completions`` counts the rows without
  an error that have no pooled value, and ``cut_at_max_tokens`` counts none (nothing is generated).
- ``extraction_failed``: rows where ``extract_answer`` raised, returned None or returned what JSON cannot
  hold, over the rows whose completion had no error (a row without a completion is ``error_rows``' to count,
  not extraction's).

A share above the check's ``error`` level fails it with ERROR, above ``warn`` with WARN; otherwise it passes.
A check over no rows passes with share 0.

:func:`structured_outputs_matched` counts the rows whose completion satisfies their ``structured_outputs``
(reported with each answers shard; not a check).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from llm_infer_dagster.shards.pooled import pooled_kind
from llm_infer_dagster.shards.tables import POOLED_SCHEMAS
from llm_infer_dagster.tasks.structured import matches
from llm_infer_dagster.tasks.task_settings import ANSWERS_CHECKS, COMPLETIONS_CHECKS, CheckName, CheckSettings

__all__ = [
    "ABOUT",
    "CheckResult",
    "Severity",
    "answers_checks",
    "completions_checks",
    "judge",
    "structured_outputs_matched",
]

Severity = Literal["WARN", "ERROR"]

#: name -> what the share counts (the checks' descriptions, in Dagster and in failures)
ABOUT: dict[CheckName, str] = {
    "error_rows": "share of the shard's rows with an error (no completion)",
    "empty_completions": "share of rows without an error whose first response is empty or whitespace",
    "cut_at_max_tokens": "share of rows without an error whose first sample stopped at max_tokens "
    '(finish_reason "length")',
    "extraction_failed": "share of rows with a completion whose extract_answer raised or returned None",
}


@dataclass(frozen=True)
class CheckResult:
    """One check on one shard: ``count`` of ``rows`` rows are bad, and what the thresholds make of that."""

    name: CheckName
    count: int
    rows: int
    warn: float
    error: float
    blocking: bool

    @property
    def share(self) -> float:
        return self.count / self.rows if self.rows else 0.0

    @property
    def severity(self) -> Severity | None:
        """ERROR above the error level, WARN above the warn level, None (passed) otherwise."""
        if self.share > self.error:
            return "ERROR"
        if self.share > self.warn:
            return "WARN"
        return None

    @property
    def passed(self) -> bool:
        return self.severity is None

    @property
    def blocks(self) -> bool:
        """Failed with ERROR on a blocking check: the shard must not flow downstream."""
        return self.blocking and self.severity == "ERROR"

    @property
    def description(self) -> str:
        """One line: the share, the rows it is over, and the level it crossed (or stayed under)."""
        level = {"ERROR": f"above error {self.error:g}", "WARN": f"above warn {self.warn:g}", None: ""}[self.severity]
        verdict = f"failed ({level})" if level else f"passed (warn above {self.warn:g}, error above {self.error:g})"
        return f"{self.name}: {self.count} of {self.rows} rows ({self.share:.1%}); {verdict}"


def judge(name: CheckName, count: int, rows: int, checks: CheckSettings) -> CheckResult:
    """``count`` bad rows of ``rows``, against the task's thresholds for ``name``."""
    t = checks.threshold(name)
    return CheckResult(name=name, count=count, rows=rows, warn=t.warn, error=t.error, blocking=t.blocking)


def completions_checks(completions: pl.DataFrame, checks: CheckSettings) -> list[CheckResult]:
    """``error_rows``, ``empty_completions`` and ``cut_at_max_tokens`` of one completions shard (one pass)."""
    ok = pl.col("error").is_null()
    kind = pooled_kind(completions)
    if kind is not None:  # a pooling task: "empty" is a row without its value
        empty = pl.col(next(iter(POOLED_SCHEMAS[kind]))).is_null()
    else:
        empty = pl.col("response").is_null() | (pl.col("response").str.strip_chars() == "")
    cut = pl.col("finish_reason") == "length"
    n_ok, n_empty, n_cut = completions.select(
        ok.sum().alias("ok"), (ok & empty).sum().alias("empty"), (ok & cut.fill_null(False)).sum().alias("cut")
    ).row(0)
    counts: dict[CheckName, tuple[int, int]] = {
        "error_rows": (completions.height - n_ok, completions.height),
        "empty_completions": (n_empty, n_ok),
        "cut_at_max_tokens": (n_cut, n_ok),
    }
    assert set(counts) == set(COMPLETIONS_CHECKS)
    return [judge(name, *counts[name], checks) for name in COMPLETIONS_CHECKS]


def answers_checks(completions: pl.DataFrame, answers: pl.DataFrame, checks: CheckSettings) -> list[CheckResult]:
    """``extraction_failed`` of one answers shard, over the rows whose completion had no error."""
    with_completion = completions.filter(pl.col("error").is_null()).select("record_id")
    answered = answers.filter(pl.col("answer").is_not_null()).select("record_id")
    failed = with_completion.join(answered, on="record_id", how="anti").height
    assert ANSWERS_CHECKS == ("extraction_failed",)
    return [judge("extraction_failed", failed, with_completion.height, checks)]


def structured_outputs_matched(completions: pl.DataFrame) -> tuple[int, int]:
    """(rows whose every sample satisfies their ``structured_outputs``, rows that had one), over the rows with
    a completion; the row's effective parameters are its ``sampling_params``. (0, 0) when no row had one."""
    matched = constrained = 0
    specs: dict[str, dict[str, Any] | None] = {}  # a shard's rows mostly share one parameter set
    for row in completions.filter(pl.col("error").is_null()).iter_rows(named=True):
        key = row["sampling_params"] or "{}"
        if key not in specs:
            specs[key] = json.loads(key).get("structured_outputs")
        spec = specs[key]
        if not spec:
            continue
        constrained += 1
        responses = row["responses"] or []
        matched += bool(responses) and all(matches(spec, r) for r in responses)
    return matched, constrained
