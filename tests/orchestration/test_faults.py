"""Faults and bad input over a finished run (issue 13): what a user does to their input never loses results.

Real ``llm-infer`` subprocesses, a real Dagster instance, the real HF engine on the tiny model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey
from tests_support import CONFIGS, REPO, cli_env, instance_at, llm_infer, write_qa_input


def _args(model: str, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model_path", model, "--model_type", "hf", "--use_cpu", "--output_path", str(out),
        "--task_name", "qa_regex", "--config_path", str(CONFIGS), "--input_path", str(data),
        "--shard_size", "4", "--no_progress", *extra,
    ]  # fmt: skip


def _answers(out: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted((out / "qa_regex" / "answers").glob("*.parquet"))])


def _extract_records(out: Path) -> list[dict]:
    return [r for f in sorted((out / "results" / "extract").iterdir()) for r in json.loads(f.read_text())]


@pytest.mark.slow
def test_truncated_and_emptied_input_keep_finished_results(tmp_path: Path, tiny_model_path: str) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    write_qa_input(data, files=2, rows=8)  # 2 files x 8 rows, 4 shards of 4
    args = _args(tiny_model_path, data, out)
    first = llm_infer(*args)
    assert first.returncode == 0, first.stderr
    assert "4/4 shards done, 16 rows" in first.stdout
    before_rows, before_records = _answers(out).sort("record_id"), _extract_records(out)
    comp_dir = out / "qa_regex" / "completions"
    stamps = {p.name: p.stat().st_mtime_ns for p in comp_dir.glob("*.parquet")}

    files = sorted(data.iterdir())
    lines = files[0].read_text().splitlines(keepends=True)
    files[0].write_text("".join(lines[:2]))  # truncated: its second shard's rows are gone, the first is short
    files[1].write_text("")  # emptied by accident: `> file`

    again = llm_infer(*args)
    assert again.returncode == 0, again.stderr
    assert "is empty, fewer than the 8 its shards were made from" in again.stderr
    assert "has 2 rows, fewer than the 8" in again.stderr and "--redo_shrunk" in again.stderr
    assert "nothing to do" in again.stderr
    assert "4/4 shards done, 16 rows" in again.stdout and "4 shard(s) kept" in again.stdout
    assert _answers(out).sort("record_id").equals(before_rows)  # not one finished answer lost
    assert _extract_records(out) == before_records
    assert {p.name: p.stat().st_mtime_ns for p in comp_dir.glob("*.parquet")} == stamps
    assert "fewer than the 8 its shards were made from" in (out / "logs" / "main.log").read_text()

    plan = llm_infer(*args, "--plan_only")
    assert plan.returncode == 0 and plan.stdout.count("kept (input shrank)") == 4

    # Redoing them is an explicit choice: the shards are cut back to the rows the files have now.
    redo = llm_infer(*args, "--redo_shrunk")
    assert redo.returncode == 0, redo.stderr
    assert "4/4 shards done, 2 rows" in redo.stdout
    inst = instance_at(out)
    assert len(inst.get_materialized_partitions(AssetKey(["qa_regex", "answers"]))) == 4


@pytest.mark.slow
def test_restored_input_is_not_redone(tmp_path: Path, tiny_model_path: str) -> None:
    """A failed sync that empties a file, then the same rows back: nothing is redone, nothing lost."""
    data, out = tmp_path / "data", tmp_path / "out"
    write_qa_input(data, files=1, rows=8)
    args = _args(tiny_model_path, data, out)
    assert llm_infer(*args).returncode == 0
    path = next(data.iterdir())
    saved = path.read_text()
    path.write_text("")
    assert "is empty" in llm_infer(*args).stderr
    path.write_text(saved)
    back = llm_infer(*args)
    assert back.returncode == 0 and "nothing to do" in back.stderr and "warning" not in back.stderr


def _task_copy(tmp: Path) -> Path:
    configs = tmp / "configs"
    shutil.copytree(CONFIGS / "qa_regex", configs / "qa_regex", ignore=shutil.ignore_patterns("data"))
    shutil.copy(CONFIGS / "default_sampling_params.json", configs)
    return configs


@pytest.mark.slow
def test_read_file_raising_on_a_rerun_fails_only_its_shards_in_one_line(tmp_path: Path, tiny_model_path: str) -> None:
    data, out, configs = tmp_path / "data", tmp_path / "out", _task_copy(tmp_path)
    write_qa_input(data, files=2, rows=4)
    args = [a if a != str(CONFIGS) else str(configs) for a in _args(tiny_model_path, data, out)]
    assert llm_infer(*args).returncode == 0
    task_py = configs / "qa_regex" / "task_config.py"
    task_py.write_text(
        task_py.read_text().replace(
            "def read_file(file_path):\n",
            "def read_file(file_path):\n    if 'part-001' in file_path:\n        raise ValueError('bad line 3')\n",
        )
    )  # a new read_file: every raw shard is stale and re-read
    again = llm_infer(*args)
    assert again.returncode == 2, again.stderr
    assert "Traceback" not in again.stderr and "Stack Trace" not in again.stderr
    last = again.stdout.strip().splitlines()[-1]
    assert "1 shard(s) failed: " in last and "read_file(" in last and "raised ValueError: bad line 3" in last
    # part-000's shards were redone with the new read_file and answered; part-001's keep their old results
    answers = _answers(out)
    assert answers.height == 8


@pytest.mark.slow
def test_two_llm_infer_on_one_task_never_compute_a_shard_twice(tmp_path: Path, tiny_model_path: str) -> None:
    """Both start at once on an empty output dir (the instance is created once); they split the shards."""
    data, out = tmp_path / "data", tmp_path / "out"
    write_qa_input(data, files=2, rows=12)
    args = _args(tiny_model_path, data, out, "--shard_size", "2", "--batch_size", "1")
    cmd = [sys.executable, "-m", "llm_infer_dagster", *args]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr[-2000:]
        assert "Traceback" not in stderr and "shards done" in stdout
    inst = instance_at(out)
    comp = AssetKey(["qa_regex", "completions"])
    records = inst.fetch_materializations(comp, limit=1000).records
    per_shard = Counter(r.partition_key for r in records)
    keys = inst.get_dynamic_partitions("qa_regex_shards")
    assert len(keys) == 12 and set(per_shard) == set(keys)
    assert max(per_shard.values()) == 1, per_shard  # no shard was computed by both
    assert len({r.run_id for r in records}) == 2  # and both did some of the work
    answers = _answers(out)
    assert answers.height == 24 and answers["record_id"].n_unique() == 24
    again = llm_infer(*args)
    assert again.returncode == 0 and "nothing to do" in again.stderr


def test_a_failed_plan_only_creates_nothing_and_plan_only_keeps_args_json(tmp_path: Path, tiny_model_path: str) -> None:
    empty, out = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    r = llm_infer(*_args(tiny_model_path, empty, out, "--plan_only"))
    assert r.returncode == 2 and "returned no files" in r.stderr
    assert not out.exists()  # no output dir, no instance, for a command that could not plan anything
    data = tmp_path / "data"
    write_qa_input(data, files=1, rows=4)
    out.mkdir()
    (out / "args.json").write_text('{"from": "the last run"}')
    assert llm_infer(*_args(tiny_model_path, data, out, "--plan_only")).returncode == 0
    assert json.loads((out / "args.json").read_text()) == {"from": "the last run"}
