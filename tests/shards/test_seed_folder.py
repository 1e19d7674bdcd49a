"""An output folder of the original llm-infer is told apart from this tool's, and refused (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests_support import tree_digest, write_seed_output

from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.shards.seed_folder import refuse_seed_folder, seed_results
from llm_infer_dagster.shards.storage import RemotePath

ROWS = [{"question": f"q{i}", "gold": i} for i in range(7)]


def _seed(tmp_path: Path, done: int = 2) -> Path:
    out = tmp_path / "out"
    write_seed_output(out, tmp_path / "data", ROWS, tasks=3, done=done)
    return out


def test_a_seed_folder_is_refused_in_one_line_and_left_as_it_was(tmp_path: Path) -> None:
    out = _seed(tmp_path)
    before = tree_digest(out)
    assert seed_results(out) == (
        "args.json, 2 results/infer files, 2 results/extract files, 2 done markers in logs/completions, "
        "3 task logs in logs/tasks"
    )
    with pytest.raises(SettingsError) as err:
        refuse_seed_folder(out)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{out} holds results of the original llm-infer")
    assert "new --output_path" in str(err.value)
    assert tree_digest(out) == before


def test_markers_alone_count_and_args_json_alone_does_not(tmp_path: Path) -> None:
    out = _seed(tmp_path, done=0)  # started, nothing finished: only args.json and task logs
    for log in (out / "logs" / "tasks").iterdir():
        log.unlink()
    assert seed_results(out) is None  # no results to lose (an args.json alone is also what a test leaves)
    (out / "logs" / "completions" / "00000").touch()
    assert seed_results(out) == "args.json, 1 done marker in logs/completions"


@pytest.mark.parametrize("record", ["results/index.json", ".dagster/dagster.yaml", "qa_regex/shards.json"])
def test_this_tools_own_records_mean_it_is_this_tools_folder(tmp_path: Path, record: str) -> None:
    out = _seed(tmp_path)
    (out / record).parent.mkdir(parents=True, exist_ok=True)
    (out / record).write_text("{}")
    assert seed_results(out) is None
    refuse_seed_folder(out)


def test_an_args_json_with_this_tools_flags_is_this_tools(tmp_path: Path) -> None:
    out = _seed(tmp_path)
    args = json.loads((out / "args.json").read_text())
    (out / "args.json").write_text(json.dumps({**args, "shard_size": None, "plan_only": False}))
    assert seed_results(out) is None


def test_missing_empty_and_unrelated_folders_pass(tmp_path: Path) -> None:
    assert seed_results(tmp_path / "nope") is None
    assert seed_results(tmp_path) is None
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "results").mkdir()
    assert seed_results(tmp_path) is None
    file = tmp_path / "a-file"
    file.write_text("x")
    assert seed_results(file) is None


def test_a_seed_folder_behind_a_url_is_refused_too(tmp_path: Path) -> None:
    out = _seed(tmp_path)
    url = RemotePath.from_url(f"file://{out}")
    assert seed_results(url) is not None
    (out / "results" / "index.json").write_text("{}")
    assert seed_results(url) is None
