"""``"calibrate": true`` through the whole platform (`llm-infer`, HF engine on the tiny model): the first shards try
batch widths, the rest run at the chosen one, each shard's metadata says which, and the completions equal a run
without calibration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
from dagster import AssetKey
from tests_support import CONFIGS, instance_at, llm_infer, write_qa_input


def _run(tmp_path: Path, name: str, model: str, calibrate: bool) -> Path:
    configs, data, out = tmp_path / f"configs-{name}", tmp_path / "data", tmp_path / f"out-{name}"
    shutil.copytree(CONFIGS / "qa_regex", configs / "qa_regex")
    (configs / "qa_regex" / "task_settings.json").write_text(json.dumps({"calibrate": calibrate}))
    if not data.exists():
        write_qa_input(data, files=2, rows=24)
    done = llm_infer(
        "--model_path", model, "--model_type", "hf", "--use_cpu", "--output_path", str(out), "--task_name",
        "qa_regex", "--config_path", str(configs), "--input_path", str(data), "--shard_size", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_calibration_tries_widths_keeps_one_and_changes_no_completion(tmp_path: Path, tiny_model_path: str) -> None:
    tuned = _run(tmp_path, "tuned", tiny_model_path, calibrate=True)
    plain = _run(tmp_path, "plain", tiny_model_path, calibrate=False)

    def completions(out: Path) -> pl.DataFrame:
        files = sorted((out / "qa_regex" / "completions").glob("*.parquet"))
        cols = ["record_id", "response", "finish_reason", "completion_tokens", "error"]
        return pl.concat([pl.read_parquet(f).select(cols) for f in files]).sort("record_id")

    assert completions(tuned).height == 48
    assert completions(tuned).equals(completions(plain))

    inst = instance_at(tuned)
    key = AssetKey(["qa_regex", "completions"])
    records = inst.fetch_materializations(key, limit=1000).records
    tunings = sorted(
        (r.timestamp, r.asset_materialization.metadata["calibration"].value)  # type: ignore[union-attr]
        for r in records
        if r.asset_materialization is not None and "calibration" in r.asset_materialization.metadata
    )
    assert len(tunings) == 24  # every shard says where calibration stood
    states = [t["state"] for _, t in tunings]
    # a warm-up shard, then 5 widths (8..128 around batch_size 32) of at most 4 shards each: chosen by shard 21
    assert states[0] == "trying" and states[-1] == "chosen"
    last = tunings[-1][1]
    assert last["knob"] == "batch_size" and last["default"] == 32 and last["width"] in (8, 16, 32, 64, 128)
    assert len(last["trials"]) >= 2 and str(last["width"]) in last["trials"]
    assert all(t == last for _, t in tunings if t["state"] == "chosen")  # once chosen, it stays
    logged = [
        e.user_message
        for run in inst.get_runs()
        for e in (r.event_log_entry for r in inst.get_records_for_run(run.run_id, limit=100000).records)
        if "calibration chose batch_size" in e.user_message
    ]
    assert len(logged) == 1 and f"batch_size {last['width']} (default 32)" in logged[0]

    plain_meta = [
        r.asset_materialization.metadata  # type: ignore[union-attr]
        for r in instance_at(plain).fetch_materializations(key, limit=1000).records
    ]
    assert plain_meta and not any("calibration" in m for m in plain_meta)  # off by default: nothing tried
