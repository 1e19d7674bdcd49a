"""Tasks without Python: a folder holding task.yaml loads as a task, refuses bad input in one line, and keeps the
platform's guarantees (stable shards, staleness on a changed template or changed rows, no read_file at
registration)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.shards.manifest import plan_registration, save_manifest
from llm_infer_dagster.shards.store import TaskStore
from llm_infer_dagster.tasks.loader import TaskConfig, discover_tasks, load_task
from llm_infer_dagster.tasks.versions import task_code_versions

ROWS = [{"question": f"{i} + 1", "gold": i + 1, "note": "x"} for i in range(10)]


def make_task(
    root: Path,
    yaml_text: str,
    rows: list[dict[str, Any]] | None = None,
    data: str = "data/part.jsonl",
    name: str = "t",
) -> Path:
    """A task folder ``root/cfg/<name>`` with ``task.yaml`` and one data file; returns the task configs dir."""
    folder = root / "cfg" / name
    (folder / Path(data).parent).mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(ROWS if rows is None else rows)
    path = folder / data
    if path.suffix == ".parquet":
        frame.write_parquet(path)
    elif path.suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_ndjson(path)
    (folder / "task.yaml").write_text(textwrap.dedent(yaml_text))
    return root / "cfg"


BASIC = """
    dataset:
      path: data
    prompt: "How much is {{ question }}? Answer with a number."
    answer:
      regex: "-?\\\\d+"
    score: {column: gold, tolerance: 0.000001}
    sampling: {max_tokens: 8, temperature: 0}
"""


def versions(task: TaskConfig) -> dict[str, str]:
    return task_code_versions(task.module, task.folder, task.sampling_params, model_type="hf", model_path=None)


# -- loading and the functions --------------------------------------------------------------------------------------


def test_a_folder_holding_task_yaml_is_a_task(tmp_path: Path) -> None:
    cfg = make_task(tmp_path, BASIC)
    assert discover_tasks(cfg) == ["t"]
    task = load_task(cfg, "t")
    assert task.is_yaml and task.config_file == cfg / "t" / "task.yaml"
    assert task.sampling_params["max_tokens"] == 8 and task.sampling_params["temperature"] == 0
    files = task.list_files(task.input_path(None))
    assert [Path(f).name for f in files] == ["part.jsonl"]
    rows = task.read_rows(files[0])
    assert rows[3] == {"question": "3 + 1", "gold": 4, "note": "x"}
    assert task.format_prompt(rows[3]) == "How much is 3 + 1? Answer with a number."
    assert task.extract_answer("It is -4, not 5.") == "-4"
    assert task.extract_answer("no idea") is None
    assert task.score is not None
    assert task.score("4", rows[3]) == 1.0 and task.score("4.0000000001", rows[3]) == 1.0
    assert task.score("5", rows[3]) == 0.0 and task.score(None, rows[3]) == 0.0 and task.score("x", rows[3]) == 0.0


def test_chat_messages_columns_group_and_exact_match(tmp_path: Path) -> None:
    cfg = make_task(
        tmp_path,
        """
        dataset: {path: data/part.csv, columns: [question, gold]}
        prompt:
          - {role: system, content: "You add numbers."}
          - {role: user, content: "{{ question }} = ?{% if gold > 5 %} (big){% endif %}"}
        answer: {regex: "answer is (\\\\d+)"}
        score: {column: gold, match: exact}
        """,
        data="data/part.csv",
    )
    task = load_task(cfg, "t")
    row = task.read_rows(task.list_files(task.input_path(None))[0])[7]
    assert row == {"question": "7 + 1", "gold": 8}  # only the named columns
    assert task.format_prompt(row) == [
        {"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "7 + 1 = ? (big)"},
    ]
    assert task.extract_answer("The answer is 8.") == "8"  # group 1
    assert task.score is not None and task.score("8", row) == 1.0 and task.score("08", row) == 0.0


def test_without_answer_the_answer_is_the_text_and_without_score_there_is_none(tmp_path: Path) -> None:
    cfg = make_task(tmp_path, "dataset: {path: data}\nprompt: \"{{ row['question'] }}\"\n")
    task = load_task(cfg, "t")
    assert task.extract_answer("  42 \n") == "42" and task.score is None
    assert task.format_prompt({"question": "q?"}) == "q?"


def test_the_template_is_sandboxed(tmp_path: Path) -> None:
    cfg = make_task(tmp_path, 'dataset: {path: data}\nprompt: "{{ question.__class__.__mro__ }}"\n')
    task = load_task(cfg, "t")
    with pytest.raises(Exception, match="unsafe|undefined|__class__"):
        task.format_prompt({"question": "q"})


def test_split_keeps_only_its_files(tmp_path: Path) -> None:
    text = 'dataset: {path: data, split: test}\nprompt: "{{ question }}"\n'
    cfg = make_task(tmp_path, text, data="data/test-0.jsonl")
    pl.DataFrame(ROWS).write_ndjson(cfg / "t" / "data" / "train-0.jsonl")
    task = load_task(cfg, "t")
    assert [Path(f).name for f in task.list_files(task.input_path(None))] == ["test-0.jsonl"]


# -- bad input: one line naming the file and the key, at load ----------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ('dataset: {path: data}\npromt: "{{ question }}"\n', r"unknown key 'promt'; did you mean 'prompt'\?"),
        ('dataset: {pth: data}\nprompt: "x"\n', r"unknown key 'dataset.pth'; did you mean 'path'\?"),
        ('dataset: {path: data}\nprompt: "{{ questoin }}"\n',
         r"prompt names column 'questoin', which .*part.jsonl does not have \(columns: question, gold, note\); "
         r"did you mean 'question'\?"),
        ('dataset: {path: nowhere}\nprompt: "x"\n', r"dataset.path 'nowhere' does not exist"),
        ('dataset: {path: data}\nprompt: "x"\nanswer: {regex: "(\\\\d+"}\n',
         r"answer.regex '\(\\\\d\+' is not a valid regular expression"),
        ('dataset: {path: data}\nprompt: "{{ question }"\n',
         r"prompt is not a valid Jinja2 template \(template line 1"),
        ('dataset: {path: data}\nprompt: [{role: user, content: "{% if %}"}]\n',
         r"prompt\[0\].content is not a valid Jinja2 template"),
        ('dataset: {path: data}\nprompt: "x"\nscore: {column: gold}\n', r"score: .*exactly one of match"),
        ('dataset: {path: data}\nprompt: "x"\nscore: {column: answer, match: exact}\n',
         r"score.column names column 'answer'"),
        ('dataset: {path: data, columns: [question]}\nprompt: "{{ gold }}"\n', r"prompt names column 'gold'"),
        ('dataset: {path: data}\nprompt: "x"\nsampling: {temprature: 0}\n', r"temprature"),
        ('dataset: {path: data}\nprompt: "x\n', r"task.yaml line \d+: not valid YAML"),
        ("prompt: x\n", r"dataset is missing"),
    ],
)  # fmt: skip
def test_bad_task_yaml_is_one_line_naming_file_and_key(tmp_path: Path, yaml_text: str, expected: str) -> None:
    cfg = make_task(tmp_path, yaml_text)
    with pytest.raises(TaskConfigError, match=expected) as info:
        load_task(cfg, "t")
    message = str(info.value)
    assert "\n" not in message and str(cfg / "t" / "task.yaml") in message


# -- registration, versions, staleness -----------------------------------------------------------------------------


def test_parquet_registration_never_calls_read_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"question": f"{i} + 1", "gold": i + 1} for i in range(200_000)]
    cfg = make_task(tmp_path, BASIC, rows=rows, data="data/big.parquet")
    task = load_task(cfg, "t")
    calls: list[str] = []
    real = task.read_rows

    def counted(path: str) -> list[dict[str, Any]]:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(task, "read_rows", counted)
    store = TaskStore(tmp_path / "out", "t")
    reg = plan_registration(task, store, task.input_path(None), shard_size=4096)
    assert calls == []  # counted from the Parquet footer, digested in polars: no Python dict per row
    assert sum(s.rows for s in reg.manifest.shards.values()) == 200_000 and len(reg.manifest.shards) == 49
    assert all(s.digest for s in reg.manifest.shards.values())
    save_manifest(store, reg.manifest)

    # An edited row makes exactly its shard's data version change; the keys stay.
    rows[5000]["question"] = "changed"
    pl.DataFrame(rows).write_parquet(cfg / "t" / "data" / "big.parquet")
    again = plan_registration(task, store, task.input_path(None), shard_size=4096)
    assert calls == [] and list(again.manifest.shards) == list(reg.manifest.shards)
    assert list(again.observed) == [k for k, s in reg.manifest.shards.items() if s.start <= 5000 < s.stop]


def test_the_raw_step_reads_only_a_shards_rows(tmp_path: Path) -> None:
    cfg = make_task(tmp_path, BASIC, data="data/part.parquet")
    task = load_task(cfg, "t")
    path = task.list_files(task.input_path(None))[0]
    window = task.shard_rows(path)
    assert not isinstance(window, list) and len(window) == 10
    assert list(window[4:7]) == task.read_rows(path)[4:7] and list(window[8:20]) == ROWS[8:]
    (cfg / "t" / "data" / "part.parquet").write_text("not parquet")
    with pytest.raises(TaskConfigError, match="task.yaml: reading .*part.parquet raised"):
        task.shard_rows(path)


def test_a_changed_template_changes_the_tasks_version_not_the_rows(tmp_path: Path) -> None:
    cfg = make_task(tmp_path, BASIC)
    task = load_task(cfg, "t")
    before = versions(task)
    store = TaskStore(tmp_path / "out", "t")
    digests = {k: s.digest for k, s in plan_registration(task, store, task.input_path(None)).manifest.shards.items()}

    (cfg / "t" / "task.yaml").write_text(textwrap.dedent(BASIC).replace("How much is", "What is"))
    changed = load_task(cfg, "t")
    after = versions(changed)
    assert after["raw"] == before["raw"] and after["prompts"] != before["prompts"]
    assert after["answers"] != before["answers"]  # cumulative down the chain
    again = plan_registration(changed, store, changed.input_path(None))
    assert {k: s.digest for k, s in again.manifest.shards.items()} == digests  # same rows, same data version

    # A new regex makes answers stale and nothing before them; a comment changes nothing.
    (cfg / "t" / "task.yaml").write_text(textwrap.dedent(BASIC).replace('"-?\\\\d+"', '"\\\\d+"'))
    regex = versions(load_task(cfg, "t"))
    assert regex["completions"] == before["completions"] and regex["answers"] != before["answers"]
    (cfg / "t" / "task.yaml").write_text("# a comment\n" + textwrap.dedent(BASIC))
    assert versions(load_task(cfg, "t")) == before
    # Sampling is in completions' version.
    (cfg / "t" / "task.yaml").write_text(textwrap.dedent(BASIC).replace("max_tokens: 8", "max_tokens: 9"))
    sampled = versions(load_task(cfg, "t"))
    assert sampled["prompts"] == before["prompts"] and sampled["completions"] != before["completions"]


def test_the_example_folder_loads(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2] / "task_configs"
    task = load_task(repo, "yaml_example")
    files = task.list_files(task.input_path(None))
    row = task.read_rows(files[0])[0]
    assert json.dumps(task.format_prompt(row)).startswith('"How much is')
    assert task.score is not None and task.score(str(row["gold"]), row) == 1.0


# -- end to end ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_llm_infer_runs_a_task_yaml_over_parquet_and_resumes(tmp_path: Path, tiny_model_path: str) -> None:
    from tests_support import llm_infer

    rows = [{"question": f"{i} + 1", "gold": i + 1} for i in range(20)]
    cfg = make_task(tmp_path, BASIC, rows=rows, data="data/qa.parquet", name="yaml_qa")
    out = tmp_path / "out"
    base = ["--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu", "--output_path", str(out),
            "--config_path", str(cfg), "--task_name", "yaml_qa", "--shard_size", "8"]  # fmt: skip
    first = llm_infer(*base)
    assert first.returncode == 0, first.stderr
    assert "3/3 shards done, 20 rows, 0 rows failed" in first.stdout
    records = [r for f in sorted((out / "results" / "extract").iterdir()) for r in json.loads(f.read_text())]
    assert [r["origin_data"] for r in records] == rows
    assert records[4]["prompt"] == "How much is 4 + 1? Answer with a number."
    answers = pl.read_parquet(out / "yaml_qa" / "answers" / "*.parquet")
    assert answers.height == 20 and "score" in answers.columns

    again = llm_infer(*base)
    assert again.returncode == 0, again.stderr
    assert "nothing to do: every shard is done" in again.stdout + again.stderr
