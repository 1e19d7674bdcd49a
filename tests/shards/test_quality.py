"""Per-shard quality checks: what each share counts, over which rows, and what the thresholds make of it."""

from __future__ import annotations

import json

import polars as pl
import pytest

from llm_infer_dagster.shards.quality import CheckResult, answers_checks, completions_checks, judge
from llm_infer_dagster.shards.tables import ANSWER_SCHEMA, COMPLETION_SCHEMA
from llm_infer_dagster.tasks.task_settings import CheckSettings, CheckThreshold


def completions(rows: list[tuple[str | None, str | None, str | None]]) -> pl.DataFrame:
    """(response, finish_reason, error) per row."""
    return pl.DataFrame(
        {
            "record_id": [f"f:{i}" for i in range(len(rows))],
            "response": [r for r, _, _ in rows],
            "responses": [[r] if r is not None else [] for r, _, _ in rows],
            "finish_reason": [f for _, f, _ in rows],
            "finish_reasons": [[f] if f is not None else [] for _, f, _ in rows],
            "prompt_tokens": [1] * len(rows),
            "completion_tokens": [1] * len(rows),
            "error": [e for _, _, e in rows],
            "model": ["m"] * len(rows),
            "sampling_params": ["{}"] * len(rows),
        },
        schema=COMPLETION_SCHEMA,
    )


COMPS = completions(
    [
        ("A 1", "stop", None),
        ("A 2 and more", "length", None),
        ("   \n", "stop", None),  # whitespace only: empty
        ("", "length", None),  # empty and cut
        (None, None, "prompt: format_prompt raised KeyError: 'q' (row 4 of a.jsonl)"),
    ]
)


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def test_completions_shares_and_the_rows_they_are_over() -> None:
    results = by_name(completions_checks(COMPS, CheckSettings()))
    assert list(results) == ["error_rows", "empty_completions", "cut_at_max_tokens"]
    assert (results["error_rows"].count, results["error_rows"].rows) == (1, 5)  # over all rows
    assert (results["empty_completions"].count, results["empty_completions"].rows) == (2, 4)  # over rows without error
    assert (results["cut_at_max_tokens"].count, results["cut_at_max_tokens"].rows) == (2, 4)
    assert results["error_rows"].share == pytest.approx(0.2)
    assert results["cut_at_max_tokens"].share == pytest.approx(0.5)


def test_defaults_warn_and_error() -> None:
    results = by_name(completions_checks(COMPS, CheckSettings()))
    # error_rows 0.2: above warn 0.05, not above error 0.5
    assert (results["error_rows"].passed, results["error_rows"].severity) == (False, "WARN")
    # cut_at_max_tokens 0.5: exactly at its warn level is not above it (and it never errors by default)
    assert results["cut_at_max_tokens"].passed and results["cut_at_max_tokens"].severity is None
    assert CheckSettings().cut_at_max_tokens.error == 1.0
    clean = by_name(completions_checks(completions([("A", "stop", None)] * 3), CheckSettings()))
    assert all(r.passed and r.severity is None for r in clean.values())


@pytest.mark.parametrize(
    ("count", "rows", "severity"),
    [(0, 10, None), (1, 10, None), (2, 10, "WARN"), (5, 10, "WARN"), (6, 10, "ERROR"), (10, 10, "ERROR")],
)
def test_threshold_levels(count: int, rows: int, severity: str | None) -> None:
    checks = CheckSettings(error_rows=CheckThreshold(warn=0.1, error=0.5))
    r = judge("error_rows", count, rows, checks)
    assert r.severity == severity and r.passed is (severity is None)
    assert not r.blocks  # not a blocking check


def test_blocking_blocks_only_on_error() -> None:
    checks = CheckSettings(cut_at_max_tokens=CheckThreshold(warn=0.1, error=0.5, blocking=True))
    assert judge("cut_at_max_tokens", 6, 10, checks).blocks
    warned = judge("cut_at_max_tokens", 3, 10, checks)
    assert warned.severity == "WARN" and not warned.blocks


def test_one_turns_a_level_off_and_no_rows_passes() -> None:
    off = CheckSettings(cut_at_max_tokens=CheckThreshold(warn=1, error=1))
    assert judge("cut_at_max_tokens", 10, 10, off).passed
    empty = judge("error_rows", 0, 0, CheckSettings())
    assert empty.passed and empty.share == 0.0
    only_errors = by_name(completions_checks(completions([(None, None, "too long")] * 2), CheckSettings()))
    assert only_errors["error_rows"].severity == "ERROR"
    assert only_errors["cut_at_max_tokens"].rows == 0 and only_errors["cut_at_max_tokens"].passed


def test_descriptions_are_one_line_with_the_share_and_the_level() -> None:
    checks = CheckSettings(cut_at_max_tokens=CheckThreshold(warn=0.1, error=0.2))
    failed = judge("cut_at_max_tokens", 3, 4, checks).description
    assert failed == "cut_at_max_tokens: 3 of 4 rows (75.0%); failed (above error 0.2)"
    passed = judge("cut_at_max_tokens", 0, 4, checks).description
    assert passed == "cut_at_max_tokens: 0 of 4 rows (0.0%); passed (warn above 0.1, error above 0.2)"


def test_extraction_failed_counts_none_raised_and_unencodable_among_rows_with_a_completion() -> None:
    answers = pl.DataFrame(
        {
            "record_id": [f"f:{i}" for i in range(5)],
            "answer": [json.dumps(1), None, None, json.dumps({"x": 2}), None],
            "error": [None, None, "extract_answer raised ValueError: x", None, "no completion: prompt: ..."],
        },
        schema=ANSWER_SCHEMA,
    )
    (r,) = answers_checks(COMPS, answers, CheckSettings())
    # rows 0..3 had a completion; 1 (None) and 2 (raised) failed; row 4 had no completion and is not counted
    assert (r.name, r.count, r.rows) == ("extraction_failed", 2, 4)
    assert r.severity == "WARN"  # 0.5 is not above the default error level 0.5


def test_answers_join_on_record_id_not_position() -> None:
    answers = pl.DataFrame(
        {"record_id": ["f:1", "f:0"], "answer": [None, "1"], "error": [None, None]}, schema=ANSWER_SCHEMA
    )
    comps = completions([("A", "stop", None), ("B", "stop", None)])
    (r,) = answers_checks(comps, answers, CheckSettings())
    assert (r.count, r.rows) == (1, 2)
