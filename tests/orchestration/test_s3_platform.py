"""llm-infer with its output dir on S3 (moto on loopback): every result lands in the bucket, resumption works.

The real HF engine on the tiny model, through the Dagster assets, in engine workers that write their
completions to the bucket themselves: local worker processes, and Ray actors (``--ray_address local``, the
shared-storage setup of a cluster); the instance, main.log, leases and shard logs stay in the local state dir.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from dagster import AssetKey
from s3_server import S3Server
from tests_support import CONFIGS, cli_env, instance_at, llm_infer, write_qa_input


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("workers", ["processes", "ray"])
def test_llm_infer_writes_every_result_to_s3_and_resumes(
    workers: str, s3_server: S3Server, tmp_path: Path, tiny_model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if workers == "ray":
        pytest.importorskip("ray", reason="needs Ray: pip install '.[ray]' (CI installs it)")
    import fsspec

    bucket = s3_server.make_bucket(f"llm-infer-{uuid.uuid4().hex[:8]}")
    url = f"{bucket}/runs/qa"
    data, state = tmp_path / "data", tmp_path / "state"
    write_qa_input(data, files=1, rows=5)
    env = cli_env(**s3_server.env, LLM_INFER_STATE_DIR=str(state))
    args = ("--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu", "--output_path", url,
            "--task_name", "qa_regex", "--config_path", str(CONFIGS), "--input_path", str(data),
            "--shard_size", "2", "--max_model_len", "128", "--workers", "2",
            *(["--ray_address", "local"] if workers == "ray" else []))  # fmt: skip
    r = llm_infer(*args, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3/3 shards done, 5 rows" in r.stdout and f"results in {url}/results" in r.stdout

    for k, v in s3_server.env.items():  # this process reads the bucket as the command did
        monkeypatch.setenv(k, v)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    root = url.removeprefix("s3://")
    objects = {p.removeprefix(root + "/"): fs.info(p)["LastModified"] for p in fs.find(root)}
    kinds = sorted({"/".join(p.split("/")[:2]) for p in objects})
    assert kinds == ["args.json", "llm-infer.yaml", "logs/completions", "qa_regex/answers", "qa_regex/completions",
                     "qa_regex/prompts", "qa_regex/raw", "qa_regex/report.json", "qa_regex/report.md",
                     "qa_regex/report.svg", "qa_regex/shards.json", "results/extract", "results/index.json",
                     "results/infer"]  # fmt: skip
    assert sum(p.startswith("qa_regex/completions/") for p in objects) == 3
    from llm_infer_dagster.deployment import read_record  # the deployment is recorded beside the results

    assert read_record(url).model_type == "hf" and read_record(url).only_tasks == ["qa_regex"]
    records = json.loads(fs.cat_file(f"{root}/results/extract/00000.json"))
    assert len(records) == 2 and all("model_response" in rec for rec in records)
    assert not [p for p in objects if p.endswith(".tmp")]
    # what stays on this host: the Dagster instance, main.log, the shards' logs, the workers' logs
    (local,) = list(state.iterdir())
    assert (local / ".dagster" / "dagster.yaml").is_file() and (local / "logs" / "main.log").is_file()
    assert len(list((local / "logs" / "tasks").iterdir())) == 3
    worker_logs = list((local / "logs" / "workers").rglob("worker-*.log"))
    assert len(worker_logs) == 2, worker_logs
    comp = AssetKey(["qa_regex", "completions"])
    inst = instance_at(local)  # the command's instance, in the state dir
    assert len(inst.get_materialized_partitions(comp)) == 3
    md = inst.get_latest_materialization_events([comp])[comp].asset_materialization.metadata  # type: ignore[union-attr]
    assert md["parquet"].value.startswith(f"{url}/qa_regex/completions/")  # where a person finds it
    assert ("ray_worker" in md) == (workers == "ray")  # made in an actor on Ray, in a local process otherwise

    again = llm_infer(*args, env=env)  # everything is recorded in Dagster: nothing is made again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3/3 shards done, 5 rows" in again.stdout
    after = {p.removeprefix(root + "/"): fs.info(p)["LastModified"] for p in fs.find(root)}
    shard_files = [p for p in objects if p.startswith("qa_regex/") and p.endswith(".parquet")]
    assert len(shard_files) == 12 and all(after[p] == objects[p] for p in shard_files)
