"""The CPU defaults VLLMEngine adds to the caller's engine arguments (no vLLM needed: pure argument mapping)."""

from __future__ import annotations

import pytest

from llm_infer_dagster.engines.vllm import DEFAULT_CPU_KV_CACHE_BYTES, cpu_engine_args


def test_cpu_default_is_eager_with_a_kv_cache_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert cpu_engine_args({}) == {"enforce_eager": True, "kv_cache_memory_bytes": DEFAULT_CPU_KV_CACHE_BYTES}


@pytest.mark.parametrize("eager", [False, True])
def test_explicit_enforce_eager_wins(eager: bool) -> None:
    args = cpu_engine_args({"enforce_eager": eager, "max_num_seqs": 4})
    assert args["enforce_eager"] is eager and args["max_num_seqs"] == 4


def test_compilation_config_means_compile() -> None:
    args = cpu_engine_args({"compilation_config": {"mode": 2}})
    assert "enforce_eager" not in args and args["compilation_config"] == {"mode": 2}


def test_kv_cache_size_from_the_caller_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "kv_cache_memory_bytes" not in cpu_engine_args({"gpu_memory_utilization": 0.1})
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    assert "kv_cache_memory_bytes" not in cpu_engine_args({})


def test_the_callers_mapping_is_not_changed() -> None:
    given = {"max_num_seqs": 4}
    cpu_engine_args(given)
    assert given == {"max_num_seqs": 4}
