"""Evaluation-grade scores of a task sampled ``n > 1`` times per row: pass@k and maj@n. Pure: no Dagster, no files.

- A sample is **correct** when its score is at least :data:`CORRECT_AT` (1.0): for a 0/1 score the correct
  ones; for partial credit in [0, 1] only a full score, as pass@k counts functionally correct samples. A
  sample without a score (no answer extracted, extract_answer or score raised) is not correct.
- **pass@k** is the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on
  Code"): per row, ``1 - C(n-c, k) / C(n, k)`` with ``n`` the row's samples and ``c`` its correct ones,
  averaged over the rows. It is computed as the product ``1 - prod_{i=n-c+1..n} (1 - k/i)``, never with
  factorials, so it is exact enough at any n. pass@k of a row with fewer than k samples is undefined: such
  rows are left out of that average (and counted).
- **maj@n**: majority vote over a row's extracted answers (samples without one do not vote), answers being
  equal when their JSON is (objects compared key by key, whatever their order); ties go to the earliest
  sample among the tied. The winning answer is then scored; maj@n is the share of rows whose winner is correct.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl

__all__ = ["CORRECT_AT", "SampleMetrics", "majority_vote", "pass_at_k", "sample_histogram", "sample_metrics"]

#: The score at or above which a sample counts as correct for pass@k and maj@n.
CORRECT_AT = 1.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one row with ``n`` samples of which ``c`` are correct (``1 <= k <= n``)."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every draw of k samples holds a correct one
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k) / C(n, k) = prod (1 - k/i)
        miss *= 1.0 - k / i
    return 1.0 - miss


def _vote_key(answer: str) -> str:
    """The answer's JSON with object keys sorted, so {"a":1,"b":2} and {"b":2,"a":1} vote together."""
    if "{" not in answer:
        return answer
    try:
        return json.dumps(json.loads(answer), sort_keys=True, ensure_ascii=False)
    except ValueError:
        return answer


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """The index of the sample whose answer (JSON) wins the vote, or None when no sample has an answer.

    The winner is the answer most samples gave; among answers tied on count, the one given first; the index
    returned is that answer's first sample.
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        key = _vote_key(answer)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return None
    winner = min(counts, key=lambda key: (-counts[key], first[key]))
    return first[winner]


@dataclass(frozen=True)
class SampleMetrics:
    """pass@1, pass@n and maj@n over a set of rows; ``n`` is the largest number of samples of any row."""

    n: int
    pass_at_1: float
    pass_at_n: float
    maj_at_n: float
    rows: int  # rows in pass@1: rows with samples and a score
    rows_at_n: int  # rows in pass@n and maj@n: those with n samples (rows with fewer are undefined there)

    def as_record(self, digits: int = 4) -> dict[str, float | int]:
        """Named with the actual n: ``pass@1``, ``pass@8``, ``maj@8`` (and how many rows each averaged)."""
        return {
            "pass@1": round(self.pass_at_1, digits),
            f"pass@{self.n}": round(self.pass_at_n, digits),
            f"maj@{self.n}": round(self.maj_at_n, digits),
            "sampled_rows": self.rows,
            f"rows@{self.n}": self.rows_at_n,
        }


def sample_histogram(answers: pl.LazyFrame) -> list[tuple[int, int, int, int]]:
    """``(n, c, rows, rows whose majority answer is correct)`` for each (samples, correct) pair of the rows that
    have samples and a score: a few dozen tuples for any number of rows (polars' streaming engine)."""
    counted = answers.filter(pl.col("n_correct").is_not_null() & (pl.col("n_samples") > 0))
    hist = (
        counted.group_by("n_samples", "n_correct")
        .agg(rows=pl.len(), majority=(pl.col("majority_score") >= CORRECT_AT).fill_null(False).sum())
        .collect(engine="streaming")
    )
    return sorted((int(n), int(c), int(r), int(m)) for n, c, r, m in hist.iter_rows())


def sample_metrics(histogram: Iterable[tuple[int, int, int, int]]) -> SampleMetrics | None:
    """pass@1, pass@n and maj@n from :func:`sample_histogram`; n is the most samples of a row, and rows with
    fewer than n samples are left out of pass@n and maj@n. None without a row of more than one sample."""
    hist = list(histogram)
    n = max((h[0] for h in hist), default=0)
    if n < 2:  # one sample per row: pass@1 is the first sample's accuracy, and there is nothing to vote on
        return None
    rows = sum(r for _n, _c, r, _m in hist)
    at_n = [(c, r, m) for s, c, r, m in hist if s == n]
    rows_at_n = sum(r for _c, r, _m in at_n)
    return SampleMetrics(
        n=n,
        pass_at_1=sum(r * pass_at_k(s, c, 1) for s, c, r, _m in hist) / rows,
        pass_at_n=sum(r * pass_at_k(n, c, n) for c, r, _m in at_n) / rows_at_n,
        maj_at_n=sum(m for _c, _r, m in at_n) / rows_at_n,
        rows=rows,
        rows_at_n=rows_at_n,
    )
