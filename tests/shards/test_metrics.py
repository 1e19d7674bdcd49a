"""pass@k (Chen et al. 2021's unbiased estimator) and maj@n: known values, edge cases, the report's aggregation."""

from __future__ import annotations

import math

import polars as pl
import pytest

from llm_infer_dagster.shards.metrics import majority_vote, pass_at_k, sample_histogram, sample_metrics


def _by_combinations(n: int, c: int, k: int) -> float:
    return 1 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_known_values() -> None:
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is c / n
    assert pass_at_k(10, 3, 10) == 1.0 and pass_at_k(10, 1, 10) == 1.0  # k = n: any correct sample passes
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)  # 1 - C(7,2)/C(10,2)
    assert pass_at_k(5, 2, 4) == 1.0  # n - c < k: every draw of 4 holds a correct sample


@pytest.mark.parametrize("n", [1, 2, 7, 16, 50])
def test_pass_at_k_equals_the_combinatorial_form(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_by_combinations(n, c, k), abs=1e-12)


def test_pass_at_k_is_stable_where_factorials_overflow_a_float() -> None:
    # C(2000, 1000) is about 2e600, beyond a float; the product form never builds it
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    assert pass_at_k(2000, 3, 1000) == pytest.approx(_by_combinations(2000, 3, 1000), abs=1e-12)
    assert 0.0 < pass_at_k(10_000, 1, 1) < 1e-3


def test_pass_at_k_refuses_what_is_undefined() -> None:
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(4, 5, 1)


def test_majority_vote_ties_go_to_the_earliest_sample_and_none_does_not_vote() -> None:
    assert majority_vote(["1", "2", "2", "1", "2"]) == 1  # "2" wins 3 to 2: its first sample
    assert majority_vote(["1", "2", "2", "1"]) == 0  # 2 to 2: "1" came first
    assert majority_vote(["3", "1", "2", "2", "1"]) == 1  # "1" and "2" tie, "1" came first
    assert majority_vote([None, None, "7", None]) == 2  # unanswered samples do not vote
    assert majority_vote([None, None]) is None and majority_vote([]) is None
    assert majority_vote(['"a"', "1", '"a"']) == 0  # JSON compared: the string "a" twice


def test_majority_vote_compares_json_objects_whatever_their_key_order() -> None:
    assert majority_vote(['{"x": 1}', '{"a": 1, "b": 2}', '{"b": 2, "a": 1}']) == 1
    assert majority_vote(["1", "1.0", "1.0"]) == 1  # JSON, not numbers: 1 and 1.0 are two answers


def test_sample_metrics_average_each_rows_own_n_and_leave_rows_with_fewer_samples_out_of_pass_at_n() -> None:
    answers = pl.DataFrame(
        {
            "n_samples": [4, 4, 4, 2, 0, 4],
            "n_correct": [1, 0, 4, 1, None, None],  # a row without completion, a row the scorer declined
            "majority_score": [0.0, 0.0, 1.0, 1.0, None, 1.0],
        }
    )
    hist = sample_histogram(answers.lazy())
    assert hist == [(2, 1, 1, 1), (4, 0, 1, 0), (4, 1, 1, 0), (4, 4, 1, 1)]
    m = sample_metrics(hist)
    assert m is not None and (m.n, m.rows, m.rows_at_n) == (4, 4, 3)
    assert m.pass_at_1 == pytest.approx((1 / 4 + 0 + 1 + 1 / 2) / 4)
    assert m.pass_at_n == pytest.approx(2 / 3)  # the 2-sample row has no pass@4
    assert m.maj_at_n == pytest.approx(1 / 3)
    assert m.as_record() == {"pass@1": 0.4375, "pass@4": 0.6667, "maj@4": 0.3333, "sampled_rows": 4, "rows@4": 3}


def test_no_sample_metrics_for_one_sample_per_row_or_no_rows() -> None:
    assert sample_metrics([]) is None
    assert sample_metrics([(1, 1, 5, 5), (1, 0, 5, 0)]) is None
