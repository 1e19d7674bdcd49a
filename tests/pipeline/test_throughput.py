"""A run's pace and cost from its shard landings (pipeline/throughput.py): synthetic timestamps, no clock."""

from __future__ import annotations

import pytest

from llm_infer_dagster.pipeline.throughput import Throughput, clock, hours, rate


def test_nothing_landed_yet_has_no_eta() -> None:
    t = Throughput(1000, started=100.0, devices=4, unit="GPU")
    p = t.at(160.0)
    assert p.rows_done == 0 and p.rows_per_s == 0 and p.eta_s is None and p.tokens_per_s is None
    assert p.device_hours == pytest.approx(60 * 4 / 3600)  # the GPUs are held from the start
    assert p.projected_device_hours is None
    assert p.bar_text() == "0 rows/s, ETA ?, 0.0667 GPU-h"


def test_before_a_window_has_passed_rates_count_from_the_start() -> None:
    t = Throughput(1000, started=0.0, devices=2, unit="GPU", window_s=300)
    t.landed(40.0, 100, 5000)  # engine start and the first shard
    t.landed(60.0, 100, 3000)
    p = t.at(100.0)
    assert p.rows_per_s == pytest.approx(2.0) and p.tokens_per_s == pytest.approx(80.0)
    assert p.eta_s == pytest.approx(800 / 2.0)
    assert p.overall_tokens_per_s == pytest.approx(80.0)
    assert p.projected_device_hours == pytest.approx((100 + 400) * 2 / 3600)


def test_the_recent_window_forgets_the_engine_start() -> None:
    # A slow start (600 s to load), then a shard of 100 rows every 10 s.
    t = Throughput(100_000, started=0.0, devices=1, unit="GPU", window_s=300)
    for i in range(1, 101):
        t.landed(600.0 + 10 * i, 100, 2000)
    p = t.at(1600.0)
    assert p.rows_per_s == pytest.approx(10.0)  # 30 landings in the last 300 s
    assert p.tokens_per_s == pytest.approx(200.0)
    assert p.overall_tokens_per_s == pytest.approx(200_000 / 1600)  # the whole wall time, start included
    assert p.eta_s == pytest.approx((100_000 - 10_000) / 10.0)
    # Nothing lands for a while: the recent rate falls and the ETA grows, honestly.
    later = t.at(1800.0)
    assert later.rows_per_s == pytest.approx(1000 / 300) and later.eta_s > p.eta_s


def test_slow_shards_widen_the_window() -> None:
    # 4 workers land a shard each together every 1000 s: a 300 s window would hold 0 or 4 shards.
    t = Throughput(40 * 50, started=0.0, parallel=4, window_s=300)
    for k in range(1, 6):
        for _ in range(4):
            t.landed(1000.0 * k, 50)
    assert t.window() == pytest.approx(3 * 1000)
    rates = {round(t.at(now).rows_per_s, 3) for now in (5000.0, 5500.0, 5999.0)}
    assert rates == {round(12 * 50 / 3000, 3)}  # three rounds of 4 shards in every 3000 s


def test_done_runs_have_eta_zero_and_a_summary() -> None:
    t = Throughput(300, started=0.0, devices=8, unit="GPU")
    for at in (1200.0, 2400.0, 3600.0):
        t.landed(at, 100, 1_000_000)
    p = t.at(3600.0)
    assert p.eta_s == 0 and p.projected_device_hours == pytest.approx(8.0)
    assert p.summary_text() == "3,000,000 output tokens at 833 tokens/s, 8 GPU-hours"
    assert p.bar_text().endswith("ETA 0:00, 8 GPU-h")  # no projection once done


def test_answers_alone_carry_no_tokens_and_cpu_runs_count_cores() -> None:
    t = Throughput(20, started=0.0, devices=0)
    t.landed(2.0, 10)
    p = t.at(4.0)
    assert p.tokens_done is None and p.summary_text() == "" and p.bar_text() == "2.5 rows/s, ETA 0:04"
    cpu = Throughput(20, started=0.0, devices=2, unit="CPU")
    cpu.landed(3.0, 10, 40)
    md = cpu.at(3.0).metadata()
    assert md["run_cpus"] == 2 and md["run_cpu_hours"] == pytest.approx(round(6 / 3600, 6))
    assert md["run_tokens_per_s"] == pytest.approx(13.3) and md["run_eta"] == "0:03"
    assert "run_gpu_hours" not in md
    assert cpu.at(3.0).log_text() == "10/20 rows, 3.3 rows/s, 13 tok/s, ETA 0:03, 0.0017/~0.0033 CPU-h"


def test_a_landing_reported_late_is_placed_in_time() -> None:
    t = Throughput(10_000, started=0.0, window_s=10)
    for at in range(100, 0, -1):  # a shard a second, reported newest first
        t.landed(float(at), 10)
    assert t.window() == 10 and t.at(100.0).rows_per_s == pytest.approx(10.0)  # the 10 in (90, 100]


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.05, "0.05"), (3.21, "3.2"), (312.4, "312"), (999.7, "1k"), (41_234.0, "41.2k"), (1_234_567.0, "1.23M")],
)
def test_rate_format(value: float, text: str) -> None:
    assert rate(value) == text


def test_clock_and_hours_formats() -> None:
    assert clock(7985.4) == "2:13:05" and clock(360_000) == "100:00:00" and clock(None) == "?"
    assert clock(3599) == "59:59" and clock(61) == "1:01"  # under an hour: m:ss
    assert [hours(h) for h in (0, 0.00001, 0.0004, 0.31, 4.2, 12.345, 1234.5)] == [
        "0", "<0.0001", "0.0004", "0.31", "4.2", "12.3", "1,234",
    ]  # fmt: skip


def test_a_pooling_run_lands_rows_without_tokens_and_says_rows() -> None:
    t = Throughput(80, started=0.0, devices=2, unit="CPU")
    t.landed(10.0, 40, 0)  # embed / classify / reward: rows, no output tokens
    t.landed(20.0, 40, 0)
    p = t.at(20.0)
    assert p.tokenless and p.summary_text() == "80 rows at 4 rows/s, 0.0111 CPU-hours"
    assert "tok/s" not in p.bar_text() and p.bar_text().startswith("4 rows/s")
    generating = Throughput(80, started=0.0)
    generating.landed(10.0, 40, 400)
    assert not generating.at(10.0).tokenless
