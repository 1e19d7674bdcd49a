"""The task's evaluation report, computed: one row per model from its shards' Parquet files, and a chart.

No Dagster: ``orchestration/assets/report.py`` gives this module the answers and completions files of every
model (and the generation seconds its shards recorded in Dagster) and turns the result into metadata.

- Rows, errors and extraction rate come from the answers files; tokens from the completions files. Both are
  read with a lazy polars scan of only the columns needed, in polars' streaming engine, so a task of 1M rows
  is aggregated without holding its rows in memory.
- The mean score has a 95% confidence interval: the **Wilson score interval** when every score of the model
  is 0 or 1 (accuracy: it stays inside [0, 1] and behaves at small n and near 0 or 1), otherwise the
  **Student t interval** ``mean ± t(0.975, n-1) · s / √n`` (s the sample standard deviation). One scored row
  has no interval. ``ci_method`` names the one used.
- With ``n > 1`` samples per row and a ``score``: pass@1, pass@n and maj@n beside the mean score (which stays
  the first sample's), named with the actual n (``pass@8``); ``shards/metrics.py`` says how they are computed.
- tokens/s is completion tokens over the sum of the shards' generation seconds (each shard's ``seconds``):
  shards that share an engine overlap in time, so it is a lower bound of the engine's throughput, comparable
  between models run the same way.
- The chart is an SVG drawn here (no plotting library): bars of the mean score with its interval (or of
  the extraction rate when the task has no ``score``) and of tokens/s, one per model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any, Literal

import polars as pl

from llm_infer_dagster.shards.metrics import SampleMetrics, sample_histogram, sample_metrics
from llm_infer_dagster.shards.storage import RemotePath, StorePath
from llm_infer_dagster.shards.tables import COMPLETION_SCHEMA, SAMPLED_ANSWER_SCHEMA

__all__ = [
    "Interval",
    "ModelReport",
    "chart_svg",
    "mean_interval",
    "model_report",
    "report_markdown",
    "sample_columns",
    "score_metadata",
    "t_quantile",
    "wilson_interval",
]

Z_975 = 1.959963984540054  # the standard normal's 0.975 quantile
_EXACT_T_MAX_DF = 100  # above: the Cornish-Fisher expansion of the t quantile (error < 1e-6)

IntervalMethod = Literal["wilson", "t"]


@dataclass(frozen=True)
class Interval:
    """A 95% confidence interval of a mean, and how it was made."""

    low: float
    high: float
    method: IntervalMethod


def wilson_interval(successes: float, n: int, z: float = Z_975) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (n >= 1)."""
    if n < 1:
        raise ValueError("wilson_interval needs n >= 1")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` degrees of freedom (integer df: Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    total = term = 1.0
    if df % 2 == 1:
        if df == 1:
            return 2 / math.pi * theta
        for k in range(3, df - 1, 2):  # 1 + 2/3 c^2 + 2*4/(3*5) c^4 + ...
            term *= (k - 1) / k * c2
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)
    for k in range(2, df - 1, 2):  # 1 + 1/2 c^2 + 1*3/(2*4) c^4 + ...
        term *= (k - 1) / k * c2
        total += term
    return s * total


def t_quantile(df: int, p: float = 0.975) -> float:
    """Student's t quantile (``p`` > 0.5) for ``df`` >= 1 degrees of freedom, without scipy."""
    if df < 1:
        raise ValueError("t_quantile needs df >= 1")
    if not 0.5 < p < 1:
        raise ValueError("t_quantile needs 0.5 < p < 1")
    if df > _EXACT_T_MAX_DF:
        z = _normal_quantile(p)
        return (
            z
            + (z**3 + z) / (4 * df)
            + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
        )
    target = 2 * p - 1  # P(|T| < t)
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < target:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < target else (lo, mid)
    return (lo + hi) / 2


def _normal_quantile(p: float) -> float:
    """The standard normal quantile, by bisection on erf (exact enough for an interval)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p else (lo, mid)
    return (lo + hi) / 2


def mean_interval(n: int, mean: float, std: float | None, binary: bool) -> Interval | None:
    """The 95% interval of a mean of ``n`` scores (``std``: sample standard deviation); None for n < 2."""
    if n < 2:
        return None
    if binary:
        low, high = wilson_interval(mean * n, n)
        return Interval(low, high, "wilson")
    half = t_quantile(n - 1) * (std or 0.0) / math.sqrt(n)
    return Interval(mean - half, mean + half, "t")


@dataclass(frozen=True)
class ModelReport:
    """One model's row of the report."""

    model: str
    shards: int
    rows: int
    errors: int  # rows with an error: no completion, extract_answer or score failed
    extracted: int  # rows with an answer (extract_answer returned a value)
    scored: int  # rows with a score
    mean_score: float | None
    interval: Interval | None
    prompt_tokens: int
    completion_tokens: int
    seconds: float | None  # the shards' generation seconds, as recorded; None when none were
    samples: SampleMetrics | None = None  # pass@1, pass@n, maj@n: a scored task with n > 1 samples per row

    @property
    def extraction_rate(self) -> float:
        return self.extracted / self.rows if self.rows else 0.0

    @property
    def tokens_per_s(self) -> float | None:
        return self.completion_tokens / self.seconds if self.seconds else None

    def as_record(self) -> dict[str, Any]:
        """The row as plain values (JSON, a Dagster table record), rounded for reading."""
        iv = self.interval
        return {
            "model": self.model,
            "shards": self.shards,
            "rows": self.rows,
            "errors": self.errors,
            "extraction_rate": round(self.extraction_rate, 4),
            "scored": self.scored,
            "mean_score": None if self.mean_score is None else round(self.mean_score, 4),
            "ci_low": None if iv is None else round(iv.low, 4),
            "ci_high": None if iv is None else round(iv.high, 4),
            "ci_method": None if iv is None else iv.method,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": None if self.tokens_per_s is None else round(self.tokens_per_s, 1),
            **(self.samples.as_record() if self.samples is not None else {}),
        }


def _scan(paths: Sequence[StorePath], schema: dict[str, Any], columns: list[str]) -> pl.LazyFrame:
    """A lazy scan of ``columns`` of shard files; a file without a column (answers of a task without a scorer,
    or made before it had one) reads it as null, and columns other helpers may add are ignored.

    Files in a URL output dir are read through fsspec file objects (ranged reads, nothing fetched whole)."""
    sources: list[Any] = [p.fs.open(p.path, "rb") if isinstance(p, RemotePath) else str(p) for p in paths]
    return pl.scan_parquet(
        sources,
        schema={c: schema[c] for c in schema},
        missing_columns="insert",
        extra_columns="ignore",
    ).select(columns)


def model_report(
    model: str, answers: Sequence[StorePath], completions: Sequence[StorePath], seconds: float | None = None
) -> ModelReport:
    """Aggregate one model's answers and completions files (streaming: nothing but the sums is held)."""
    a: dict[str, Any] = {"rows": 0, "errors": 0, "extracted": 0, "scored": 0, "mean": None, "std": None, "nonbinary": 0}
    if answers:
        score = pl.col("score")
        a = (
            _scan(answers, SAMPLED_ANSWER_SCHEMA, ["answer", "error", "score"])
            .select(
                rows=pl.len(),
                errors=pl.col("error").is_not_null().sum(),
                extracted=pl.col("answer").is_not_null().sum(),
                scored=score.is_not_null().sum(),
                mean=score.mean(),
                std=score.std(ddof=1),
                nonbinary=(score.is_not_null() & (score != 0.0) & (score != 1.0)).sum(),
            )
            .collect(engine="streaming")
            .row(0, named=True)
        )
    samples = (
        sample_metrics(
            sample_histogram(_scan(answers, SAMPLED_ANSWER_SCHEMA, ["n_samples", "n_correct", "majority_score"]))
        )
        if answers
        else None
    )
    c: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0}
    if completions:
        c = (
            _scan(completions, COMPLETION_SCHEMA, ["prompt_tokens", "completion_tokens"])
            .select(pl.col("prompt_tokens").sum(), pl.col("completion_tokens").sum())
            .collect(engine="streaming")
            .row(0, named=True)
        )
    scored = int(a["scored"])
    mean = float(a["mean"]) if scored else None
    std = float(a["std"]) if scored > 1 and a["std"] is not None else None
    interval = mean_interval(scored, mean, std, binary=a["nonbinary"] == 0) if mean is not None else None
    return ModelReport(
        model=model,
        shards=len(answers),
        rows=int(a["rows"]),
        errors=int(a["errors"]),
        extracted=int(a["extracted"]),
        scored=scored,
        mean_score=mean,
        interval=interval,
        prompt_tokens=int(c["prompt_tokens"] or 0),
        completion_tokens=int(c["completion_tokens"] or 0),
        seconds=seconds,
        samples=samples,
    )


def score_metadata(answers: pl.DataFrame) -> dict[str, Any]:
    """What one answers shard reports of its scores: ``scored`` rows and their ``mean_score`` (None if none),
    and with n > 1 samples per row its pass@1, pass@n and maj@n."""
    scores = answers["score"].drop_nulls()
    md: dict[str, Any] = {
        "scored": scores.len(),
        "mean_score": round(float(scores.mean()), 6) if scores.len() else None,  # type: ignore[arg-type]
    }
    if "n_correct" in answers.columns:
        samples = sample_metrics(sample_histogram(answers.lazy()))
        md.update(samples.as_record(6) if samples is not None else {})
    return md


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def sample_columns(reports: Sequence[ModelReport]) -> list[str]:
    """The pass@k and maj@n names the models have (``pass@1``, ``pass@8``, ``maj@8``), in order; none without
    a model sampled n > 1 times."""
    names: dict[str, None] = {}
    for r in reports:
        if r.samples is not None:
            n = r.samples.n
            names.update(dict.fromkeys(["pass@1", f"pass@{n}", f"maj@{n}"]))
    return list(names)


def report_markdown(reports: Sequence[ModelReport]) -> str:
    """The models side by side, as a Markdown table (with pass@k and maj@n after the mean score's interval)."""
    extra = sample_columns(reports)
    head = (
        "| model | shards | rows | errors | extraction rate | scored | mean score | 95% CI | interval "
        + "".join(f"| {name} " for name in extra)
        + "| prompt tokens | completion tokens | tokens/s |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---|---|" + "---:|" * len(extra) + "---:|---:|---:|"]
    for r in reports:
        iv = r.interval
        ci = "—" if iv is None else f"[{iv.low:.3f}, {iv.high:.3f}]"
        metrics = r.samples.as_record() if r.samples is not None else {}
        lines.append(
            f"| {r.model} | {r.shards} | {r.rows} | {r.errors} | {r.extraction_rate:.1%} | {r.scored} "
            f"| {_fmt(r.mean_score)} | {ci} | {iv.method if iv else '—'} "
            + "".join(f"| {_fmt(metrics.get(name))} " for name in extra)
            + f"| {r.prompt_tokens} | {r.completion_tokens} | {_fmt(r.tokens_per_s, 1)} |"
        )
    return "\n".join(lines)


# -- the chart ------------------------------------------------------------------------------------------------

_BAR_H, _GAP, _LABEL_W, _PLOT_W, _VALUE_W, _PAD = 22, 10, 150, 300, 190, 12
_COLORS = ("#4f46e5", "#0891b2", "#16a34a", "#ca8a04", "#dc2626", "#9333ea", "#db2777", "#475569")


def chart_svg(reports: Sequence[ModelReport]) -> str:
    """An SVG of the models side by side: mean score with its 95% interval (else extraction rate), tokens/s."""
    scored = any(r.mean_score is not None for r in reports)
    panels: list[tuple[str, list[tuple[float | None, Interval | None, str]], tuple[float, float]]] = []
    if scored:
        vals = [(r.mean_score, r.interval, _score_label(r)) for r in reports]
        panels.append(("mean score (95% CI)", vals, _score_axis(reports)))
    else:
        vals = [(r.extraction_rate, None, f"{r.extraction_rate:.1%} of {r.rows}") for r in reports]
        panels.append(("extraction rate", vals, (0.0, 1.0)))
    speeds = [r.tokens_per_s for r in reports]
    top = max((s for s in speeds if s is not None), default=0.0)
    panels.append(("tokens/s", [(s, None, _fmt(s, 1)) for s in speeds], (0.0, top * 1.1 if top > 0 else 1.0)))
    width = _PAD * 2 + _LABEL_W + _PLOT_W + _VALUE_W
    rows_h = len(reports) * (_BAR_H + _GAP)
    panel_h = 40 + rows_h
    height = _PAD * 2 + panel_h * len(panels)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    y0 = _PAD
    for title, values, (lo, hi) in panels:
        out.append(f'<text x="{_PAD}" y="{y0 + 14}" font-weight="bold" fill="#111827">{escape(title)}</text>')
        x_plot = _PAD + _LABEL_W
        span = (hi - lo) or 1.0

        def x_of(v: float, lo: float = lo, span: float = span, x_plot: int = x_plot) -> float:
            return x_plot + _PLOT_W * min(1.0, max(0.0, (v - lo) / span))

        axis_top, axis_bottom = y0 + 22, y0 + 22 + rows_h
        x_zero = x_of(0.0 if lo <= 0 <= hi else lo)  # bars start at 0 where the axis holds it
        out.append(f'<line x1="{x_zero:.1f}" y1="{axis_top}" x2="{x_zero:.1f}" y2="{axis_bottom}" stroke="#9ca3af"/>')
        for i, (r, (value, iv, label)) in enumerate(zip(reports, values, strict=True)):
            y = axis_top + i * (_BAR_H + _GAP) + _GAP / 2
            color = _COLORS[i % len(_COLORS)]
            out.append(
                f'<text x="{_PAD + _LABEL_W - 8}" y="{y + _BAR_H * 0.7:.1f}" text-anchor="end" fill="#111827">'
                f"{escape(r.model[:22])}</text>"
            )
            if value is not None:
                end = x_of(value)
                left, w = min(x_zero, end), abs(end - x_zero)
                out.append(
                    f'<rect x="{left:.1f}" y="{y:.1f}" width="{max(w, 1.0):.1f}" height="{_BAR_H}" fill="{color}" '
                    'fill-opacity="0.85"/>'
                )
            if iv is not None:
                xl, xh, ym = x_of(iv.low), x_of(iv.high), y + _BAR_H / 2
                out.append(
                    f'<path d="M{xl:.1f} {ym:.1f}H{xh:.1f}M{xl:.1f} {ym - 6:.1f}V{ym + 6:.1f}'
                    f'M{xh:.1f} {ym - 6:.1f}V{ym + 6:.1f}" stroke="#111827" stroke-width="1.5" fill="none"/>'
                )
            out.append(
                f'<text x="{x_plot + _PLOT_W + 8}" y="{y + _BAR_H * 0.7:.1f}" fill="#374151">{escape(label)}</text>'
            )
        for v, anchor in ((lo, "start"), (hi, "end")):  # the axis' ends, so a bar reads against its scale
            out.append(
                f'<text x="{x_of(v):.1f}" y="{axis_bottom + 11}" text-anchor="{anchor}" font-size="10" '
                f'fill="#6b7280">{_tick(v)}</text>'
            )
        y0 += panel_h
    out.append("</svg>")
    return "\n".join(out)


def _tick(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.2g}"


def _score_label(r: ModelReport) -> str:
    if r.mean_score is None:
        return "no scores"
    iv = r.interval
    ci = f" [{iv.low:.2f}, {iv.high:.2f}]" if iv else ""
    return f"{r.mean_score:.3f}{ci} n={r.scored}"


def _score_axis(reports: Sequence[ModelReport]) -> tuple[float, float]:
    """[0, 1] when every score and interval fits in it (accuracy-like scores), else the data's range."""
    points = [v for r in reports for v in (r.mean_score, *((r.interval.low, r.interval.high) if r.interval else ()))]
    values = [v for v in points if v is not None]
    lo, hi = min([0.0, *values]), max([1.0, *values]) if values else 1.0
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    pad = (hi - lo) * 0.05 or 1.0
    return lo - (pad if lo < 0 else 0.0), hi + pad
