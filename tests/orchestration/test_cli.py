"""``llm-infer`` end to end, as a user runs it: real subprocesses, a real Dagster instance under
<output>/.dagster, the real HF engine on the tiny model."""

from __future__ import annotations

import json
import re
import time

import polars as pl
import pytest
from dagster import AssetKey, DagsterRunStatus
from tests_support import CONFIGS, cli_env, instance_at, llm_infer, sigkill_llm_infer_after, write_qa_input


def _check_pace(run, wall: float, completions) -> None:  # noqa: ANN001 - a CompletedProcess, an EventRecordsResult
    """The progress bar and the last line give the run's pace, in line with each shard's Dagster metadata."""
    mds = [r.asset_materialization.metadata for r in completions.records]
    assert len(mds) == 5
    for md in mds:
        assert md["rows_per_s"].value > 0 and md["tokens_per_s"].value > 0
        assert {"run_rows_per_s", "run_tokens_per_s", "run_eta", "run_cpu_hours", "run_cpus"} <= set(md)
    tokens = sum(md["completion_tokens"].value for md in mds)
    m = re.search(r"; this run: ([\d,]+) output tokens at ([\d.]+)(k?) tokens/s, ([\d.]+) CPU-hours;", run.stdout)
    assert m is not None, run.stdout
    assert int(m[1].replace(",", "")) == tokens > 0
    per_s = float(m[2]) * (1000 if m[3] else 1)
    assert per_s > 0 and tokens / per_s <= wall * 1.05  # tokens over a time within the command's (3 digits shown)
    assert float(m[4]) > 0
    # The bar (on stderr, redrawn with \r) ends at every row with the rates, no ETA left and the CPU-hours spent;
    # the command's last stderr line is still the UI hint.
    draws = [d.strip() for d in re.split(r"[\r\n]", run.stderr) if "|" in d]
    assert draws and re.search(r"\| 23/23, [\d.]+k? rows/s, [\d.]+k? tok/s, ETA 0:00, [\d.]+ CPU-h$", draws[-1])
    assert run.stderr.strip().splitlines()[-1].startswith("see them in the Dagster UI: ")


@pytest.mark.slow
def test_run_resume_rerun_extract_only_and_seed_layout(tmp_path, tiny_model_path):
    out = tmp_path / "out"
    base = [
        "--model_path",
        tiny_model_path,
        "--model_type",
        "hf",
        "--use_cpu",
        "--output_path",
        str(out),
        "--task_name",
        "qa_regex",
        "--config_path",
        str(CONFIGS),
    ]

    plan = llm_infer(*base, "--tasks", "4", "--plan_only")
    assert plan.returncode == 0, plan.stderr
    shard_lines = [ln for ln in plan.stdout.splitlines()[1:] if ln.strip()]
    # 20 + 12 rows cut into 8-row shards within each file: 8,8,4 and 8,4
    assert len(shard_lines) == 5 and all("pending" in ln for ln in shard_lines)
    assert not (out / "qa_regex" / "completions").exists()
    # Shards keep their size unless re-cut; the warning reaches the terminal and main.log (issue 8).
    other_size = llm_infer(*base, "--shard_size", "3", "--plan_only")
    assert other_size.returncode == 0 and "warning: task qa_regex keeps its 8-row shards" in other_size.stderr
    assert "keeps its 8-row shards (asked for 3)" in (out / "logs" / "main.log").read_text()

    started = time.monotonic()
    first = llm_infer(*base, "--save_text", "--limit", "5", progress=True)
    wall = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    assert "5/5 shards done, 23 rows, 0 rows failed" in first.stdout  # --limit 5 keeps <= 5 rows of each shard
    assert str(out / "results") in first.stdout.splitlines()[-1]
    _check_pace(first, wall, instance_at(out).fetch_materializations(AssetKey(["qa_regex", "completions"]), limit=9))
    for sub in ("results/infer", "results/extract", "results/text", "logs/tasks"):
        assert len(list((out / sub).iterdir())) == 5, sub
    assert (out / "args.json").is_file() and json.loads((out / "args.json").read_text())["limit"] == 5
    assert "run" in (out / "logs" / "main.log").read_text()
    # Step processes' Dagster output goes to a log file, not over the progress bar.
    assert "STEP_WORKER_STARTED" not in first.stderr
    assert "STEP_WORKER_STARTED" in (out / "logs" / "steps.log").read_text()
    records = [r for f in sorted((out / "results" / "extract").iterdir()) for r in json.loads(f.read_text())]
    assert len(records) == 23 and len({r["record_id"] for r in records}) == 23
    assert {"file_name", "file_idx", "origin_data", "prompt", "model_response", "extracted_answer"} <= set(records[0])

    inst = instance_at(out)
    comp = AssetKey(["qa_regex", "completions"])
    assert len(inst.get_materialized_partitions(comp)) == 5
    mats_before = len(inst.fetch_materializations(comp, limit=1000).records)

    # Without --limit, the limited shards are stale (raw's code version holds the limit): they are redone.
    plan = llm_infer(*base, "--plan_only")  # the plan says so first, and changes nothing
    assert plan.returncode == 0 and "5 shard(s) to redo" in plan.stderr, plan.stderr
    assert sum(" stale " in line for line in plan.stdout.splitlines()) == 5, plan.stdout
    full = llm_infer(*base)
    assert full.returncode == 0, full.stderr
    assert "5 shard(s) to redo" in full.stderr
    assert "5/5 shards done, 32 rows" in full.stdout
    mats_before = len(inst.fetch_materializations(comp, limit=1000).records)
    again = llm_infer(*base)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert len(inst.fetch_materializations(comp, limit=1000).records) == mats_before

    # --extract_only: loads no model (a model path that does not exist is fine), re-extracts every shard.
    answers_key = AssetKey(["qa_regex", "answers"])
    ans_before = len(inst.fetch_materializations(answers_key, limit=1000).records)
    workers_dirs = set((out / "logs" / "workers").iterdir())
    ex = llm_infer(*[a if a != tiny_model_path else "/no/such/model" for a in base], "--extract_only")
    assert ex.returncode == 0, ex.stderr
    assert len(inst.fetch_materializations(comp, limit=1000).records) == mats_before
    assert len(inst.fetch_materializations(answers_key, limit=1000).records) >= ans_before + 5
    assert set((out / "logs" / "workers").iterdir()) == workers_dirs  # no engine worker started

    # --rerun at the same size redoes every shard in place: no key changes, nothing is wiped first.
    mats_before = len(inst.fetch_materializations(comp, limit=1000).records)
    keys_before = sorted(p.name for p in (out / "results" / "extract").iterdir())
    rerun = llm_infer(*base, "--rerun")
    assert rerun.returncode == 0, rerun.stderr
    assert "5/5 shards done, 32 rows" in rerun.stdout
    assert len(inst.get_materialized_partitions(comp)) == 5
    assert len(inst.fetch_materializations(comp, limit=1000).records) > mats_before
    assert sorted(p.name for p in (out / "results" / "extract").iterdir()) == keys_before

    # --rerun with another size re-cuts: the seed layout then holds exactly the new shards.
    recut = llm_infer(*base, "--tasks", "2", "--rerun")
    assert recut.returncode == 0, recut.stderr
    assert "3/3 shards done, 32 rows" in recut.stdout  # 16-row shards within each file: 16, 4 and 12
    assert len(list((out / "results" / "extract").iterdir())) == 3
    # and its "inference done" markers: the re-cut's shards only, each with its results
    markers = sorted(p.name for p in (out / "logs" / "completions").iterdir())
    assert markers == sorted(p.stem for p in (out / "results" / "extract").iterdir())


@pytest.mark.slow
def test_sigkill_loses_only_in_flight_shards(tmp_path, tiny_model_path):
    data, out = tmp_path / "data", tmp_path / "out"
    write_qa_input(data, files=3, rows=24)
    args = [
        "--model_path",
        tiny_model_path,
        "--model_type",
        "hf",
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
        "3",
        "--batch_size",
        "1",
    ]
    comp_dir = out / "qa_regex" / "completions"
    sigkill_llm_infer_after(args, comp_dir, shards=2, timeout=240)

    inst = instance_at(out)
    comp = AssetKey(["qa_regex", "completions"])
    done_before = inst.get_materialized_partitions(comp)
    total = len(inst.get_dynamic_partitions("qa_regex_shards"))
    assert total == 24 and 1 <= len(done_before) < total
    stamps = {k: (comp_dir / f"{k}.parquet").stat().st_mtime_ns for k in done_before}

    assert [r.status for r in inst.get_runs()] == [DagsterRunStatus.STARTED]  # its process is gone
    resumed = llm_infer(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{total}/{total} shards done, 72 rows" in resumed.stdout
    # The killed run is marked failed (so the schedule does not wait on it for ever), with why.
    assert "was left running by a process that is gone; marked it failed" in resumed.stderr
    killed = inst.get_runs()[-1]
    assert killed.status == DagsterRunStatus.FAILURE
    assert not [r for r in inst.get_runs() if r.status == DagsterRunStatus.STARTED]
    assert inst.get_materialized_partitions(comp) == set(inst.get_dynamic_partitions("qa_regex_shards"))
    for k, mtime in stamps.items():  # finished shards were not redone
        assert (comp_dir / f"{k}.parquet").stat().st_mtime_ns == mtime
    ids = pl.concat([pl.read_parquet(p) for p in (out / "qa_regex" / "answers").glob("*.parquet")])["record_id"]
    assert ids.len() == 72 and ids.n_unique() == 72  # nothing lost, nothing duplicated
    assert not list(comp_dir.glob(".*.tmp"))  # no half-written shard left behind


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--task_name", "no_such_task"], "no task 'no_such_task'"),
        (["--task_name", "../task_configs"], "not a plain folder name"),
        (
            ["--task_name", "qa_regex", "--tensor_parallel_size", "2"],
            "tensor_parallel_size > 1 needs --model_type vllm",
        ),
        (["--task_name", "qa_regex", "--model_path", "/no/such/model"], "not a local model folder"),
        (["--task_name", "qa_regex", "--tasks", "0"], "--tasks must be >= 1"),
        (  # the seed's README puts tensor_parallel_size in --model_args: it counts as the flag
            ["--task_name", "qa_regex", "--model_args", '{"tensor_parallel_size": 2}'],
            "tensor_parallel_size > 1 needs --model_type vllm",
        ),
        (
            ["--task_name", "qa_regex", "--tensor_parallel_size", "1", "--model_args", '{"tensor_parallel_size": 2}'],
            "--model_args sets tensor_parallel_size=2 but --tensor_parallel_size gives 1",
        ),
    ],
)
def test_configuration_mistakes_exit_nonzero_with_one_line(tmp_path, tiny_model_path, args, expected):
    model = [] if "--model_path" in args else ["--model_path", tiny_model_path]
    r = llm_infer("--model_type", "hf", "--use_cpu", "--output_path", str(tmp_path / "o"), *model, *args, timeout=60)
    assert r.returncode == 2
    assert expected in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_more_gpus_than_visible_is_refused_before_loading(tmp_path, tiny_model_path):
    r = llm_infer(
        "--model_path",
        tiny_model_path,
        "--model_type",
        "hf",
        "--output_path",
        str(tmp_path / "o"),
        "--task_name",
        "qa_regex",
        "--workers",
        "2",
        env=cli_env(CUDA_VISIBLE_DEVICES="0"),
        timeout=60,
    )
    assert r.returncode == 2 and "2 x 1 = 2 GPUs, but 1 are visible" in r.stderr


def test_bad_sampling_key_names_the_file(tmp_path, tiny_model_path):
    configs = tmp_path / "configs"
    (configs / "t").mkdir(parents=True)
    (configs / "t" / "task_config.py").write_text((CONFIGS / "basic_example" / "task_config.py").read_text())
    (configs / "t" / "sampling_params.json").write_text('{"temprature": 0}')
    r = llm_infer(
        "--model_path",
        tiny_model_path,
        "--model_type",
        "hf",
        "--use_cpu",
        "--output_path",
        str(tmp_path / "o"),
        "--task_name",
        "t",
        "--config_path",
        str(configs),
        timeout=60,
    )
    assert r.returncode == 2
    assert "sampling_params.json" in r.stderr and "temprature" in r.stderr and "temperature" in r.stderr


@pytest.mark.slow
def test_the_seeds_documented_model_args_run(tmp_path, tiny_model_path):
    """Issue 8: `--model_args '{"tensor_parallel_size": 1, "max_model_len": 256}'` (the seed's README) just works."""
    out = tmp_path / "out"
    r = llm_infer(
        "--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu", "--output_path", str(out),
        "--task_name", "basic_example", "--config_path", str(CONFIGS),
        "--model_args", '{"tensor_parallel_size": 1, "max_model_len": 256, "trust_remote_code": false}',
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "shards done" in r.stdout and "0 rows failed" in r.stdout
    args = json.loads((out / "args.json").read_text())
    assert (args["tensor_parallel_size"], args["max_model_len"], args["trust_remote_code"]) == (1, 256, False)
    assert json.loads(args["model_args"]) == {}
