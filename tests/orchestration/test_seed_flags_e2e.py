"""The seed's task-folder flags end to end: ``llm-infer`` runs a task whose file, sampling file and four
functions all have other names, and ``--max_input_length`` turns long prompts into error rows.

A real subprocess, a real Dagster instance under <output>/.dagster, the real HF engine on the tiny model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from tests_support import CONFIGS, llm_infer, write_qa_input

RENAMES = {
    "get_file_list": "list_inputs",
    "read_file": "load_rows",
    "format_prompt": "make_prompt",
    "extract_answer": "parse_answer",
}


def renamed_qa_task(configs: Path) -> Path:
    """A copy of qa_regex as ``my_task.py`` + ``my_sampling.json``, its functions renamed; no task_config.py."""
    folder = configs / "qa_renamed"
    shutil.copytree(CONFIGS / "qa_regex", folder)
    shutil.copy(CONFIGS / "default_sampling_params.json", configs / "default_sampling_params.json")
    source = (folder / "task_config.py").read_text(encoding="utf-8")
    for old, new in RENAMES.items():
        assert f"def {old}(" in source
        source = source.replace(f"def {old}(", f"def {new}(")
    (folder / "my_task.py").write_text(source, encoding="utf-8")
    (folder / "task_config.py").unlink()
    (folder / "sampling_params.json").rename(folder / "my_sampling.json")
    return folder


@pytest.mark.slow
def test_renamed_task_runs_and_max_input_length_makes_error_rows(tmp_path: Path, tiny_model_path: str) -> None:
    configs, out, data = tmp_path / "configs", tmp_path / "out", tmp_path / "in"
    renamed_qa_task(configs)
    write_qa_input(data, files=1, rows=4)
    base = [
        "--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu", "--output_path", str(out),
        "--task_name", "qa_renamed", "--config_path", str(configs), "--input_path", str(data),
        "--task_config_fn", "my_task.py", "--sampling_params_fn", "my_sampling.json",
        *(arg for old, new in RENAMES.items() for arg in (f"--{old}_func", new)),
    ]  # fmt: skip

    first = llm_infer(*base)
    assert first.returncode == 0, first.stderr
    assert "1/1 shards done, 4 rows, 0 rows failed" in first.stdout, first.stdout
    (answers,) = (out / "results" / "extract").iterdir()
    records = json.loads(answers.read_text())
    assert len(records) == 4 and all(f"What is 0 + {i}?" in r["prompt"] for i, r in enumerate(records))
    (comp,) = (out / "qa_renamed" / "completions").glob("*.parquet")
    assert json.loads(pl.read_parquet(comp)["sampling_params"][0])["stop"] == ["\nQuestion:"]  # my_sampling.json

    capped = llm_infer(*base, "--max_input_length", "3")  # a new allowance: the shard's completions are stale
    assert capped.returncode == 0, capped.stderr
    assert "4 rows failed" in capped.stdout, capped.stdout
    errors = pl.read_parquet(comp)["error"].to_list()
    assert len(errors) == 4
    assert all(e and e.endswith("tokens, longer than the 3 allowed (--max_input_length)") for e in errors), errors
