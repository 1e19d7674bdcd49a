"""The package's layers, read from the source: each imports only the layers before it, and only
``orchestration/`` imports Dagster (``definitions.py``, the code location, sits on top of it).

models -> tasks, shards, engines -> runtime -> deployment.py -> pipeline (the Dagster-free streaming loop) ->
orchestration (Dagster: assets, the step adapter, CLI, Component) -> definitions.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import llm_infer_dagster

PACKAGE = Path(llm_infer_dagster.__file__).parent
P = "llm_infer_dagster."
DAGSTER = ("dagster", "dagster_shared", "dagster_webserver", "dagster_postgres")

#: layer -> what it must not import (the later layers, and Dagster for all but orchestration)
RULES: dict[str, tuple[str, ...]] = {
    "tasks": (
        *DAGSTER,
        P + "shards",
        P + "engines",
        P + "runtime",
        P + "deployment",
        P + "pipeline",
        P + "orchestration",
    ),
    "shards": (*DAGSTER, P + "engines", P + "runtime", P + "deployment", P + "pipeline", P + "orchestration"),
    # built model folders (the demo model, GGUF conversion): below the engines, which name its fix
    "models": (
        *DAGSTER,
        P + "tasks",
        P + "shards",
        P + "engines",
        P + "runtime",
        P + "deployment",
        P + "pipeline",
        P + "orchestration",
    ),
    "engines": (
        *DAGSTER,
        P + "tasks",
        P + "shards",
        P + "runtime",
        P + "deployment",
        P + "pipeline",
        P + "orchestration",
    ),
    "runtime": (*DAGSTER, P + "tasks", P + "deployment", P + "pipeline", P + "orchestration"),
    "deployment.py": (*DAGSTER, P + "runtime", P + "pipeline", P + "orchestration"),
    # the streaming loop: every layer above, no Dagster (orchestration/assets/pipeline.py adapts it)
    "pipeline": (*DAGSTER, P + "orchestration"),
    "errors.py": (*DAGSTER, "llm_infer_dagster"),
}


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
    root = PACKAGE / layer
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    bad = {}
    for path in files:
        hits = sorted(m for m in imported_modules(path) if any(m == f or m.startswith(f + ".") for f in forbidden))
        if hits:
            bad[str(path.relative_to(PACKAGE))] = hits
    return bad


@pytest.mark.parametrize(("layer", "forbidden"), list(RULES.items()))
def test_layer_imports(layer: str, forbidden: tuple[str, ...]) -> None:
    assert offending(layer, forbidden) == {}


def test_only_orchestration_imports_dagster() -> None:
    allowed = {"orchestration", "definitions.py"}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in allowed:
            continue
        hits = {m for m in imported_modules(path) if m.split(".")[0] in DAGSTER}
        assert not hits, f"{rel} imports {sorted(hits)}: Dagster belongs in orchestration/"


def test_hf_sampling_is_pure() -> None:
    mods = imported_modules(PACKAGE / "engines" / "hf_sampling.py")
    assert not {m for m in mods if m.split(".")[0] in {"torch", "transformers", "vllm"}}


def test_asset_keys_have_one_owner() -> None:
    """Only ``orchestration/asset_keys.py`` builds a task's asset keys from their parts or reads them back by
    position (as dagster-dbt's translator owns dbt's keys): nowhere else ``AssetKey([...])`` or ``key.path[i]``."""
    owner = PACKAGE / "orchestration" / "asset_keys.py"
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == owner:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            builds = (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "AssetKey"
                and node.args
                and isinstance(node.args[0], ast.List | ast.ListComp)
            )
            reads = (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "path"
                and getattr(node.value.value, "id", None) != "sys"  # sys.path[0] is not a key
                and isinstance(node.slice, ast.Constant | ast.UnaryOp)
            )
            if builds or reads:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_the_code_location_reads_nothing_at_import() -> None:
    """``definitions.py`` is a thin, lazy entry: importing it builds nothing (``@dg.definitions``)."""
    source = (PACKAGE / "definitions.py").read_text(encoding="utf-8")
    assert "os.environ" not in source and "getenv" not in source
    module = ast.parse(source)
    top_calls = [n for n in module.body if isinstance(n, ast.Assign | ast.Expr) and isinstance(n.value, ast.Call)]
    assert top_calls == []  # no `defs = build_definitions()` at import


def test_run_batch_sits_on_the_cli_never_under_it() -> None:
    """``run_batch.py`` wraps ``llm-infer`` (its flags, its run); the CLI imports it only where ``main``
    dispatches ``llm-infer run-batch`` to it, and nothing of it (the output file is ``batch_output.py``)."""
    tree = ast.parse((PACKAGE / "orchestration" / "cli.py").read_text(encoding="utf-8"))
    where = []
    for func in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom) and (
                node.module == P + "orchestration.run_batch"
                or (node.module == P + "orchestration" and any(a.name == "run_batch" for a in node.names))
            ):
                where.append(func.name)
    assert where == ["main"]
