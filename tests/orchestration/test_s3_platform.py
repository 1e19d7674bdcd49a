"""llm-infer with its output dir on S3 (moto on loopback): every result lands in the bucket, resumption works.

The real HF engine on the tiny model, through the Dagster assets, in engine worker processes that write their
completions to the bucket themselves; the instance, main.log, leases and shard logs stay in the local state dir.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from s3_server import S3Server
from tests_support import CONFIGS, cli_env, llm_infer, write_qa_input


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_llm_infer_writes_every_result_to_s3_and_resumes(
    s3_server: S3Server, tmp_path: Path, tiny_model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fsspec

    bucket = s3_server.make_bucket(f"llm-infer-{uuid.uuid4().hex[:8]}")
    url = f"{bucket}/runs/qa"
    data, state = tmp_path / "data", tmp_path / "state"
    write_qa_input(data, files=1, rows=5)
    env = cli_env(**s3_server.env, LLM_INFER_STATE_DIR=str(state))
    args = ("--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu", "--output_path", url,
            "--task_name", "qa_regex", "--config_path", str(CONFIGS), "--input_path", str(data),
            "--shard_size", "2", "--max_model_len", "128", "--workers", "2")  # fmt: skip
    r = llm_infer(*args, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3/3 shards done, 5 rows" in r.stdout and f"results in {url}/results" in r.stdout

    for k, v in s3_server.env.items():  # this process reads the bucket as the command did
        monkeypatch.setenv(k, v)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    root = url.removeprefix("s3://")
    objects = {p.removeprefix(root + "/"): fs.info(p)["LastModified"] for p in fs.find(root)}
    kinds = sorted({"/".join(p.split("/")[:2]) for p in objects})
    assert kinds == ["args.json", "logs/completions", "qa_regex/answers", "qa_regex/completions", "qa_regex/prompts",
                     "qa_regex/raw", "qa_regex/report.json", "qa_regex/report.md", "qa_regex/report.svg",
                     "qa_regex/shards.json", "results/extract", "results/index.json", "results/infer"]  # fmt: skip
    assert sum(p.startswith("qa_regex/completions/") for p in objects) == 3
    records = json.loads(fs.cat_file(f"{root}/results/extract/00000.json"))
    assert len(records) == 2 and all("model_response" in rec for rec in records)
    assert not [p for p in objects if p.endswith(".tmp")]
    # what stays on this host: the Dagster instance, main.log, the shards' logs, the workers' logs
    (local,) = list(state.iterdir())
    assert (local / ".dagster" / "dagster.yaml").is_file() and (local / "logs" / "main.log").is_file()
    assert len(list((local / "logs" / "tasks").iterdir())) == 3

    again = llm_infer(*args, env=env)  # everything is recorded in Dagster: nothing is made again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3/3 shards done, 5 rows" in again.stdout
    after = {p.removeprefix(root + "/"): fs.info(p)["LastModified"] for p in fs.find(root)}
    shard_files = [p for p in objects if p.startswith("qa_regex/") and p.endswith(".parquet")]
    assert len(shard_files) == 12 and all(after[p] == objects[p] for p in shard_files)
