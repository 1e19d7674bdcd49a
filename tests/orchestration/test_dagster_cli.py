"""The Dagster side of the house: `dagster job execute` with LLM_INFER_* variables and a persistent
DAGSTER_HOME materializes one shard; the code location loads from workspace.yaml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

REPO = Path(__file__).resolve().parents[2]
DAGSTER = [sys.executable, "-m", "dagster"] if shutil.which("dagster") is None else ["dagster"]


@pytest.mark.slow
def test_dagster_job_execute_materializes_one_shard(tmp_path, tiny_model_path):
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INFER_")}
    env.update(
        DAGSTER_HOME=str(home),
        LLM_INFER_OUTPUT=str(out),
        LLM_INFER_MODEL_PATH=tiny_model_path,
        LLM_INFER_MODEL_TYPE="hf",
        LLM_INFER_USE_CPU="1",
        LLM_INFER_TASKS="qa_regex",
    )

    def run(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [*DAGSTER, "job", "execute", "-m", "llm_infer_dagster.definitions", *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r

    run("-j", "qa_regex_register_shards")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        instance = DagsterInstance.get()
    finally:
        del os.environ["DAGSTER_HOME"]
    keys = instance.get_dynamic_partitions("qa_regex_shards")
    assert len(keys) == 2  # two files, each under the 512-row default shard size

    run("-j", "qa_regex_job", "--tags", json.dumps({"dagster/partition": keys[1]}))
    for name in ("raw", "prompts", "completions", "answers"):
        assert instance.get_materialized_partitions(AssetKey(["qa_regex", name])) == {keys[1]}
    assert (out / "qa_regex" / "answers" / f"{keys[1]}.parquet").is_file()
    assert not (out / "qa_regex" / "answers" / f"{keys[0]}.parquet").exists()

    # `dagster asset materialize` over a partition range: one run, one step per asset, one model load.
    r = subprocess.run(
        [
            *DAGSTER,
            "asset",
            "materialize",
            "-m",
            "llm_infer_dagster.definitions",
            "--select",
            "qa_regex/raw,qa_regex/prompts,qa_regex/completions,qa_regex/answers",
            "--partition-range",
            f"{keys[0]}...{keys[1]}",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = instance.get_runs(limit=1)[0]
    assert run.tags["dagster/asset_partition_range_start"] == keys[0]
    for name in ("raw", "prompts", "completions", "answers"):
        assert instance.get_materialized_partitions(AssetKey(["qa_regex", name])) == set(keys)
    messages = [e.user_message for e in instance.all_logs(run.run_id)]
    assert sum("model loaded" in m for m in messages) == 1


def test_workspace_loads_every_example_task():
    r = subprocess.run(
        [*DAGSTER, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("LLM_INFER_")},
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
