"""The report's pure aggregation: intervals, per-model rows from shard files, the Markdown table and the chart."""

from __future__ import annotations

import math
import statistics
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl
import pytest

from llm_infer_dagster.shards.report import (
    ModelReport,
    chart_svg,
    mean_interval,
    model_report,
    report_markdown,
    t_quantile,
    wilson_interval,
)
from llm_infer_dagster.shards.tables import ANSWER_SCHEMA, COMPLETION_SCHEMA, SCORED_ANSWER_SCHEMA


@pytest.mark.parametrize(
    ("df", "expected"),  # Student t 0.975 quantiles from the standard tables
    [(1, 12.706), (2, 4.303), (3, 3.182), (5, 2.571), (10, 2.228), (29, 2.045), (30, 2.042), (60, 2.000),
     (100, 1.984), (120, 1.980), (1000, 1.962), (10**7, 1.960)],
)  # fmt: skip
def test_t_quantile_matches_the_tables(df: int, expected: float) -> None:
    assert t_quantile(df) == pytest.approx(expected, abs=6e-4)


def test_t_quantile_is_continuous_where_the_exact_series_hands_over() -> None:
    assert t_quantile(100) - t_quantile(101) == pytest.approx(0.000241, abs=2e-5)  # 1.983972 - 1.983731
    assert t_quantile(4, 0.95) == pytest.approx(2.132, abs=6e-4)
    with pytest.raises(ValueError):
        t_quantile(0)


def test_wilson_interval_matches_known_values_and_stays_in_0_1() -> None:
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(0.7225, abs=1e-4) and high <= 1.0
    assert wilson_interval(500, 1000) == pytest.approx((0.4691, 0.5309), abs=1e-4)


def test_mean_interval_is_wilson_for_0_1_scores_and_student_t_otherwise() -> None:
    binary = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    iv = mean_interval(len(binary), statistics.mean(binary), statistics.stdev(binary), binary=True)
    assert iv is not None and iv.method == "wilson" and (iv.low, iv.high) == wilson_interval(7, 10)
    scores = [0.2, 0.9, 0.4, 0.7, 0.55]
    m, s = statistics.mean(scores), statistics.stdev(scores)
    iv = mean_interval(5, m, s, binary=False)
    assert iv is not None and iv.method == "t"
    assert iv.low == pytest.approx(m - 2.7764 * s / math.sqrt(5), abs=1e-4)
    assert iv.high == pytest.approx(m + 2.7764 * s / math.sqrt(5), abs=1e-4)
    assert mean_interval(1, 0.5, None, binary=False) is None


def _answers(path: Path, scores: list[float | None] | None, extra: bool = False) -> Path:
    n = len(scores) if scores is not None else 4
    data: dict = {
        "record_id": [f"f:{i}" for i in range(n)],
        "answer": [None if i == 0 else str(i) for i in range(n)],
        "error": ["no completion: x" if i == 0 else None for i in range(n)],
    }
    schema = dict(ANSWER_SCHEMA)
    if scores is not None:
        data["score"], schema = scores, dict(SCORED_ANSWER_SCHEMA)
    if extra:  # a column another feature may add to answers
        data["parsed"], schema["parsed"] = [True] * n, pl.Boolean
    pl.DataFrame(data, schema=schema).write_parquet(path)
    return path


def _completions(path: Path, rows: int, tokens: int) -> Path:
    pl.DataFrame(
        {"record_id": [f"f:{i}" for i in range(rows)], "response": ["r"] * rows, "responses": [["r"]] * rows,
         "finish_reason": ["stop"] * rows, "finish_reasons": [["stop"]] * rows, "prompt_tokens": [10] * rows,
         "completion_tokens": [tokens] * rows, "error": [None] * rows, "model": ["m"] * rows,
         "sampling_params": ["{}"] * rows},
        schema=COMPLETION_SCHEMA,
    ).write_parquet(path)  # fmt: skip
    return path


def test_model_report_aggregates_every_file_and_reads_a_missing_score_column_as_null(tmp_path: Path) -> None:
    a1 = _answers(tmp_path / "a1.parquet", [None, 0.5, 1.0, 0.25])  # first row: no completion, no score
    a2 = _answers(tmp_path / "a2.parquet", None)  # a shard made without a scorer
    a3 = _answers(tmp_path / "a3.parquet", [None, 0.75, None, 0.0, 1.0], extra=True)
    comps = [_completions(tmp_path / f"c{i}.parquet", rows, 3) for i, rows in enumerate((4, 4, 5))]
    r = model_report("m", [a1, a2, a3], comps, seconds=2.0)
    scores = [0.5, 1.0, 0.25, 0.75, 0.0, 1.0]
    assert (r.shards, r.rows, r.errors, r.extracted, r.scored) == (3, 13, 3, 10, 6)
    assert r.mean_score == pytest.approx(statistics.mean(scores))
    assert r.interval is not None and r.interval.method == "t"
    half = t_quantile(5) * statistics.stdev(scores) / math.sqrt(6)
    assert (r.interval.low, r.interval.high) == pytest.approx((r.mean_score - half, r.mean_score + half))
    assert (r.prompt_tokens, r.completion_tokens, r.tokens_per_s) == (130, 39, 19.5)
    assert r.extraction_rate == pytest.approx(10 / 13)
    rec = r.as_record()
    assert rec["ci_method"] == "t" and rec["tokens_per_s"] == 19.5 and rec["mean_score"] == round(r.mean_score, 4)


def test_model_report_of_0_1_scores_uses_wilson_and_of_no_files_is_empty(tmp_path: Path) -> None:
    a = _answers(tmp_path / "a.parquet", [None, 1.0, 0.0, 1.0, 1.0])
    r = model_report("m", [a], [], seconds=None)
    assert r.mean_score == 0.75 and r.interval is not None and r.interval.method == "wilson"
    assert (r.interval.low, r.interval.high) == wilson_interval(3, 4)
    assert r.tokens_per_s is None and r.completion_tokens == 0
    empty = model_report("none", [], [])
    assert (empty.rows, empty.scored, empty.mean_score, empty.interval, empty.extraction_rate) == (0, 0, None, None, 0)
    unscored = model_report("u", [_answers(tmp_path / "u.parquet", None)], [])
    assert unscored.scored == 0 and unscored.mean_score is None and unscored.rows == 4


def test_model_report_streams_many_shard_files(tmp_path: Path) -> None:
    files = []
    for f in range(40):
        n = 2500
        scores: list[float | None] = [None] + [float((f + i) % 2) for i in range(1, n)]
        files.append(_answers(tmp_path / f"a{f:03d}.parquet", scores))
    r = model_report("m", files, [])
    assert r.rows == 100_000 and r.scored == 100_000 - 40  # each file's first row has no answer, no score
    assert r.interval is not None and r.interval.method == "wilson"
    assert r.interval.low < r.mean_score < r.interval.high and r.interval.high - r.interval.low < 0.01


def _report(model: str, mean: float | None, low: float, high: float, method: str = "t") -> ModelReport:
    from llm_infer_dagster.shards.report import Interval

    iv = Interval(low, high, method) if mean is not None else None  # type: ignore[arg-type]
    return ModelReport(model, 2, 10, 1, 8, 8 if mean is not None else 0, mean, iv, 100, 50, 5.0)


def test_markdown_and_chart_show_every_model_side_by_side() -> None:
    reports = [_report("default", 0.62, 0.41, 0.80), _report("qwen", 0.31, 0.12, 0.55, "wilson")]
    md = report_markdown(reports).splitlines()
    assert md[0].startswith("| model | shards | rows | errors | extraction rate | scored | mean score | 95% CI |")
    assert md[2] == "| default | 2 | 10 | 1 | 80.0% | 8 | 0.620 | [0.410, 0.800] | t | 100 | 50 | 10.0 |"
    assert md[3].startswith("| qwen |") and "| wilson |" in md[3]
    svg = chart_svg(reports)
    root = ET.fromstring(svg)  # well-formed SVG
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "mean score (95% CI)" in texts and "tokens/s" in texts
    assert texts.count("default") == 2 and texts.count("qwen") == 2  # one label per panel
    assert "0.620 [0.41, 0.80] n=8" in texts
    assert len(list(root.iter(f"{ns}path"))) == 2  # one interval whisker per scored model
    bars = [float(r.get("width") or 0) for r in root.iter(f"{ns}rect")][1:]  # after the background
    assert bars[0] > bars[1] > 0  # 0.62 draws longer than 0.31


def test_chart_without_scores_shows_extraction_rate_and_handles_negative_scores() -> None:
    svg = chart_svg([_report("a", None, 0, 0), _report("b<c", None, 0, 0)])
    texts = [t.text for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]
    assert "extraction rate" in texts and "mean score (95% CI)" not in texts and "b<c" in texts
    ET.fromstring(chart_svg([_report("neg", -2.5, -4.0, -1.0), _report("pos", 3.0, 1.0, 5.0)]))


def test_model_report_with_n_samples_gives_pass_at_1_pass_at_n_and_maj_at_n_beside_the_mean(tmp_path: Path) -> None:
    from llm_infer_dagster.shards.tables import SAMPLED_ANSWER_SCHEMA

    a = tmp_path / "a.parquet"
    pl.DataFrame(
        {"record_id": ["f:0", "f:1", "f:2", "f:3"], "answer": ["1", "2", None, "1"], "error": [None] * 4,
         "score": [1.0, 0.0, None, 1.0], "n_samples": [8, 8, 8, 8], "n_correct": [3, 0, 0, 8],
         "majority_answer": ["2", "2", None, "1"], "majority_score": [0.0, 0.0, None, 1.0]},
        schema=SAMPLED_ANSWER_SCHEMA,
    ).write_parquet(a)  # fmt: skip
    old = _answers(tmp_path / "old.parquet", [None, 1.0])  # a shard made before: no samples, in the mean only
    r = model_report("m", [a, old], [])
    assert r.mean_score == pytest.approx(3 / 4)  # the first sample's scores, as before
    assert r.samples is not None and (r.samples.n, r.samples.rows, r.samples.rows_at_n) == (8, 4, 4)
    assert r.samples.pass_at_1 == pytest.approx((3 / 8 + 0 + 0 + 1) / 4)
    assert r.samples.pass_at_n == 0.5 and r.samples.maj_at_n == 0.25
    rec = r.as_record()
    assert (rec["pass@1"], rec["pass@8"], rec["maj@8"], rec["rows@8"]) == (0.3438, 0.5, 0.25, 4)
    md = report_markdown([r, model_report("n1", [old], [])]).splitlines()
    assert "| interval | pass@1 | pass@8 | maj@8 | prompt tokens |" in md[0]
    assert md[1].count("|") == md[0].count("|")
    assert "| 0.344 | 0.500 | 0.250 |" in md[2] and "| — | — | — |" in md[3]  # a model without samples: dashes
