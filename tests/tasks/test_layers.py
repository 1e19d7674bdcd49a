"""The package's layer rule, read from the source: ``tasks/`` (the seed's contract) imports no Dagster and no
engine; ``engines/`` imports no Dagster and nothing from ``tasks/``; the HF sampling mapping imports no torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import llm_infer_dagster

PACKAGE = Path(llm_infer_dagster.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (``from x import y`` gives ``x``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def offending(layer: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        hits = sorted(m for m in imported_modules(path) if any(m == f or m.startswith(f + ".") for f in forbidden))
        if hits:
            bad[str(path.relative_to(PACKAGE))] = hits
    return bad


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("tasks", ("dagster", "dagster_shared", "llm_infer_dagster.engines", "llm_infer_dagster.orchestration")),
        ("engines", ("dagster", "dagster_shared", "llm_infer_dagster.tasks", "llm_infer_dagster.orchestration")),
    ],
)
def test_layer_imports(layer: str, forbidden: tuple[str, ...]) -> None:
    assert offending(layer, forbidden) == {}


def test_hf_sampling_is_pure() -> None:
    mods = imported_modules(PACKAGE / "engines" / "hf_sampling.py")
    assert not {m for m in mods if m.split(".")[0] in {"torch", "transformers", "vllm"}}
