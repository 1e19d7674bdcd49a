"""The README's quick start: the demo runs, and the Dagster UI command it prints sees its shards as up to date."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance
from tests_support import REPO, cli_env


@pytest.mark.slow
def test_the_demo_runs_and_the_ui_it_prints_agrees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "llm_infer_dagster.demo", "--no_progress"],
        cwd=tmp_path, env=cli_env(PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"(\d+)/\1 shards done", r.stdout), r.stdout
    command = r.stdout.strip().splitlines()[-1]
    assert command.strip() == f"llm-infer ui --output_path {tmp_path / 'output'}", command

    # What that command loads (ui_environment: the recorded deployment and its instance, no other variable):
    # the demo's shards are fresh in the UI.
    from llm_infer_dagster.orchestration.definitions import build_definitions
    from llm_infer_dagster.orchestration.staleness import ChainVersions, stale_shards
    from llm_infer_dagster.orchestration.ui import ui_environment

    for k in [k for k in os.environ if k.startswith("LLM_INFER_")]:
        monkeypatch.delenv(k)
    env = ui_environment(str(tmp_path / "output"), {})
    assert set(env) == {"DAGSTER_HOME", "LLM_INFER_OUTPUT", "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    defs = build_definitions()
    with DagsterInstance.get() as instance:
        keys = instance.get_dynamic_partitions("qa_regex_shards")
        assert keys
        graph = defs.resolve_asset_graph()
        versions = ChainVersions(instance, graph, AssetKey(["qa_regex", "input"]), keys)
        done_comp = instance.get_materialized_partitions(AssetKey(["qa_regex", "completions"]))
        done_ans = instance.get_materialized_partitions(AssetKey(["qa_regex", "answers"]))
        chain = [AssetKey(["qa_regex", a]) for a in ("raw", "prompts", "completions")]
        full, extract = stale_shards(versions, chain, AssetKey(["qa_regex", "answers"]), keys, done_comp, done_ans)
        assert (full, extract) == (set(), set()), "the UI would show the demo's own shards as stale"
