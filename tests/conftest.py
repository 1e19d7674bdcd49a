"""Shared fixtures. Expensive ones are session-scoped: build once, reuse in every test."""

from __future__ import annotations

import pytest

from llm_infer_dagster.testing.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny real Llama (random weights, BPE tokenizer, chat template) on disk, built once per session."""
    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama"))
