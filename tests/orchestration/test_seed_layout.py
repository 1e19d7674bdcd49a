"""A seed user's downstream script reads an llm-infer output as it read the seed's (issue 8)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests_support import CONFIGS, REPO, cli_env, llm_infer, tree_digest, write_seed_output

# What a seed user's script does with the seed's output dir (the seed README's layout).
READER = textwrap.dedent(
    """
    import json, os, sys
    out = sys.argv[1]
    seen = {"files": [], "rows": 0, "markers": sorted(os.listdir(os.path.join(out, "logs", "completions")))}
    for name in sorted(os.listdir(os.path.join(out, "results", "extract"))):
        with open(os.path.join(out, "results", "extract", name)) as f:
            for r in json.load(f):
                r["model_response"].strip()  # a string on every row, error rows too
                r["extracted_answer"], r["origin_data"], r["prompt"], r["file_name"], r["file_idx"]
                seen["rows"] += 1
        seen["files"].append(name)
    for name in sorted(os.listdir(os.path.join(out, "results", "infer"))):
        with open(os.path.join(out, "results", "infer", name)) as f:
            for r in json.load(f):
                assert "extracted_answer" not in r, r  # the seed's infer records had none
    print(json.dumps(seen))
    """
)


@pytest.mark.slow
def test_a_seed_script_reads_the_numbered_results_and_markers(tmp_path: Path, tiny_model_path: str) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    rows = [{"question": f"What is {i} + 1?", "gold": i + 1} for i in range(5)]
    rows[3]["question"] = "Why " + "really " * 300 + "?"  # longer than the context: an error row
    (data / "part-000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = llm_infer(
        "--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu", "--output_path", str(out),
        "--task_name", "qa_regex", "--config_path", str(CONFIGS), "--input_path", str(data),
        "--shard_size", "2", "--max_model_len", "128", "--id_length", "5",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "3/3 shards done, 5 rows, 1 rows failed" in r.stdout
    reader = subprocess.run([sys.executable, "-c", READER, str(out)], capture_output=True, text=True, timeout=60)
    assert reader.returncode == 0, reader.stderr
    seen = json.loads(reader.stdout)
    assert seen == {"files": ["00000.json", "00001.json", "00002.json"], "rows": 5,
                    "markers": ["00000", "00001", "00002"]}  # fmt: skip
    records = json.loads((out / "results" / "extract" / "00001.json").read_text())
    failed = next(rec for rec in records if rec["file_idx"] == 3)
    assert failed["model_response"] == "" and "token" in failed["error"]
    index = json.loads((out / "results" / "index.json").read_text())["entries"]
    assert [(e["id"], e["rows"]) for e in index] == [(0, 2), (1, 2), (2, 1)]
    assert sorted(p.name for p in (out / "logs" / "tasks").iterdir()) == ["00000.log", "00001.log", "00002.log"]
    args = json.loads((out / "args.json").read_text())  # the seed's derived keys too
    assert args["completion_path"] == str(out / "logs" / "completions") and args["infer_result_path"].endswith("infer")
    from llm_infer_dagster.shards.seed_folder import seed_results

    assert seed_results(out) is None  # this tool's own folder is never taken for the original's


def test_an_original_llm_infer_folder_is_refused_before_anything_and_left_byte_identical(
    tmp_path: Path, tiny_model_path: str
) -> None:
    """Issue 22: a half-finished job of the original tool (2 of 4 tasks done) is never written over."""
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    rows = [{"question": f"What is {i} + 1?", "gold": i + 1} for i in range(10)]
    (data / "part-000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_seed_output(out, data, rows, tasks=4, done=2)
    before = tree_digest(out)
    base = [
        "--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu", "--output_path", str(out),
        "--task_name", "qa_regex", "--config_path", str(CONFIGS), "--input_path", str(data), "--tasks", "4",
    ]  # fmt: skip
    for extra in ([], ["--plan_only"], ["--rerun"], ["--extract_only"]):
        r = llm_infer(*base, *extra)
        assert r.returncode == 2, (extra, r.stdout, r.stderr)
        assert r.stdout == "" and len(r.stderr.splitlines()) == 1, (extra, r.stderr)
        assert r.stderr.startswith(
            f"llm-infer: error: {out} holds results of the original llm-infer (args.json, 2 results/infer files, "
            "2 results/extract files, 2 done markers in logs/completions, 4 task logs in logs/tasks)"
        ), r.stderr
        assert "Pass a new --output_path, or move args.json, results/ and logs/ out of" in r.stderr
        assert tree_digest(out) == before, extra  # byte-identical; no instance, log or probe file added
    # run-batch's work dir is an llm-infer output dir too
    requests = tmp_path / "requests.jsonl"
    body = {"model": "m", "prompt": "hi", "max_tokens": 2}
    requests.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": body}))
    r = subprocess.run(
        [sys.executable, "-m", "llm_infer_dagster", "run-batch", "-i", str(requests), "-o", str(tmp_path / "b.jsonl"),
         "--output_path", str(out), "--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu"],
        capture_output=True, text=True, env=cli_env(), timeout=300, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 2 and "holds results of the original llm-infer" in r.stderr, r.stderr
    assert tree_digest(out) == before and not (tmp_path / "b.jsonl").exists()
