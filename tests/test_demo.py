"""The README's quick start: the demo runs on the real demo model (SmolLM2-135M-Instruct), its scores are real,
its checks pass where the model did well, and the Dagster UI command it prints sees its shards as up to date."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance
from tests_support import REPO, cli_env


@pytest.mark.slow
def test_the_demo_runs_and_the_ui_it_prints_agrees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_model_path: str
) -> None:
    # demo_model_path: built (once) in the model cache the demo uses, so the demo finds it there
    r = subprocess.run(
        [sys.executable, "-m", "llm_infer_dagster.demo", "--no_progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env=cli_env(PYTHONPATH=str(REPO), LLM_INFER_MODEL_CACHE=str(Path(demo_model_path).parent)),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"(\d+)/\1 shards done", r.stdout), r.stdout
    # Real answers: most capitals right (a random model scores 0), most arithmetic answers in the asked form.
    score = re.search(r"report: default mean score ([\d.]+) .* over 32 rows .*capitals", r.stderr)
    assert score and float(score.group(1)) >= 0.5, r.stderr
    extracted = re.search(r"report: default ([\d.]+)% of 32 rows extracted .*qa_regex", r.stderr)
    assert extracted and float(extracted.group(1)) >= 50, r.stderr
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

        # The capitals task's first view in the UI is green: every check of every shard passed.
        for asset, names in (("completions", ("error_rows", "empty_completions", "cut_at_max_tokens")),
                             ("answers", ("extraction_failed",))):  # fmt: skip
            for name in names:
                key = AssetCheckKey(AssetKey(["capitals", asset]), name)
                records = instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
                assert records, key
                assert all(rec.event.dagster_event.event_specific_data.passed for rec in records), (key, records)
