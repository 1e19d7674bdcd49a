"""task.yaml over HF datasets: a save_to_disk folder (or a DatasetDict's split) and a hub dataset name keep the
guarantees of a Parquet dataset (rows in order, no read_file at registration, an edited row makes exactly its
shard stale), and what cannot be read is one line naming the file and key."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.shards.manifest import plan_registration, save_manifest
from llm_infer_dagster.shards.store import TaskStore
from llm_infer_dagster.tasks.loader import load_task

datasets = pytest.importorskip("datasets")

ROWS = [{"question": f"{i} + 1", "gold": i + 1} for i in range(10)]
PROMPT = 'prompt: "How much is {{ question }}?"\nscore: {column: gold, match: exact}\n'


def saved(rows: list[dict[str, Any]], path: Path, shards: int = 1) -> None:
    datasets.Dataset.from_list(rows).save_to_disk(str(path), num_shards=shards)


def task_folder(root: Path, yaml_text: str) -> Path:
    folder = root / "cfg" / "t"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.yaml").write_text(textwrap.dedent(yaml_text))
    return root / "cfg"


def test_a_save_to_disk_folder_is_read_in_order(tmp_path: Path) -> None:
    cfg = task_folder(tmp_path, "dataset: {path: data}\n" + PROMPT)
    saved(ROWS, cfg / "t" / "data", shards=3)
    task = load_task(cfg, "t")
    files = task.list_files(task.input_path(None))
    assert [Path(f).name for f in files] == [f"data-0000{i}-of-00003.arrow" for i in range(3)]
    rows = [r for f in files for r in task.read_rows(f)]
    assert rows == ROWS
    assert task.format_prompt(rows[2]) == "How much is 2 + 1?"
    window = task.shard_rows(files[0])
    assert len(window) == task.count_rows(files[0]) == len(task.read_rows(files[0]))
    assert list(window[1:3]) == task.read_rows(files[0])[1:3]


def test_a_dataset_dict_folder_reads_its_split(tmp_path: Path) -> None:
    cfg = task_folder(tmp_path, "dataset: {path: data, split: test}\n" + PROMPT)
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:3])}
    ).save_to_disk(str(cfg / "t" / "data"))
    task = load_task(cfg, "t")
    files = task.list_files(task.input_path(None))
    assert [Path(f).relative_to(cfg / "t" / "data").as_posix() for f in files] == ["test/data-00000-of-00001.arrow"]
    assert task.read_rows(files[0]) == ROWS[:3]


def test_save_to_disk_registration_never_calls_read_file_and_one_row_makes_one_shard_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"question": f"{i} + 1", "gold": i + 1} for i in range(20_000)]
    cfg = task_folder(tmp_path, "dataset: {path: data}\n" + PROMPT)
    saved(rows, cfg / "t" / "data", shards=2)
    task = load_task(cfg, "t")
    calls: list[str] = []
    monkeypatch.setattr(task, "read_rows", lambda path: calls.append(path) or [])
    store = TaskStore(tmp_path / "out", "t")
    reg = plan_registration(task, store, task.input_path(None), shard_size=1000)
    assert calls == [] and len(reg.manifest.shards) == 20
    assert sum(s.rows for s in reg.manifest.shards.values()) == 20_000
    save_manifest(store, reg.manifest)

    same = plan_registration(task, store, task.input_path(None), shard_size=1000)
    assert list(same.observed) == [] and list(same.manifest.shards) == list(reg.manifest.shards)

    rows[12_345]["question"] = "changed"
    saved(rows, cfg / "t" / "data", shards=2)  # rewrites both files: only the edited rows' shard is stale
    again = plan_registration(task, store, task.input_path(None), shard_size=1000)
    assert calls == [] and list(again.manifest.shards) == list(reg.manifest.shards)
    stale = [
        k
        for k, s in reg.manifest.shards.items()
        if s.file.endswith("00001-of-00002.arrow") and s.start <= 2345 < s.stop
    ]
    assert list(again.observed) == stale and len(stale) == 1


def test_a_hub_dataset_is_its_cached_arrow_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved(ROWS, tmp_path / "cache" / "ds")
    asked: list[tuple[Any, ...]] = []

    def load_dataset(name: str, config: str | None = None, *, split: str | None = None) -> Any:
        asked.append((name, config, split))
        return datasets.DatasetDict({"test": datasets.load_from_disk(str(tmp_path / "cache" / "ds"))})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = task_folder(tmp_path, "dataset: {path: someone/arith, name: main}\n" + PROMPT)
    task = load_task(cfg, "t")
    assert asked == [("someone/arith", "main", None)] and task.input_path(None) is None
    files = task.list_files(task.input_path(None))
    assert [Path(f).parent for f in files] == [tmp_path / "cache" / "ds"]
    assert task.read_rows(files[0]) == ROWS


def test_an_unreachable_hub_is_one_line_saying_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a machine without network
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = task_folder(tmp_path, "dataset: {path: nobody/nothing, split: test}\n" + PROMPT)
    with pytest.raises(TaskConfigError) as info:
        load_task(cfg, "t")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{cfg / 't' / 'task.yaml'}: dataset.path 'nobody/nothing' is")
    assert f"not a local path ({cfg / 't' / 'nobody' / 'nothing'} does not exist)" in message
    assert "the hub did not give it (ConnectionError: Couldn't reach 'nobody/nothing'" in message
    assert "datasets.load_dataset('nobody/nothing', split='test').save_to_disk(" in message
    assert "HF_HUB_OFFLINE=1" in message


def _dict_folder(cfg: Path) -> None:
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS)}
    ).save_to_disk(str(cfg / "t" / "data"))


@pytest.mark.parametrize(
    ("yaml_text", "make", "expected"),
    [
        ("dataset: {path: data}\nprompt: '{{ questoin }}'\n", saved,
         r"prompt names column 'questoin', which .*data-00000-of-00001.arrow does not have \(columns: question, "
         r"gold\); did you mean 'question'\?"),
        ("dataset: {path: data, columns: [question, answer]}\nprompt: x\n", saved,
         r"dataset.columns names column 'answer'"),
        ("dataset: {path: data}\nprompt: x\n", _dict_folder,
         r"dataset.path '.*data' is a DatasetDict folder; set dataset.split \(splits: train, test\)"),
        ("dataset: {path: data, split: dev}\nprompt: x\n", _dict_folder,
         r"dataset.path '.*data' split 'dev' is not one of its splits \(splits: train, test\)"),
        ("dataset: {path: data, name: main}\nprompt: x\n", saved,
         r"dataset.name 'main' is a hub dataset's config, but dataset.path 'data' is the local .*; remove name"),
        ("dataset: {path: data/nowhere}\nprompt: x\n", saved, r"dataset.path 'data/nowhere' does not exist"),
    ],
)  # fmt: skip
def test_bad_datasets_are_one_line(tmp_path: Path, yaml_text: str, make: Any, expected: str) -> None:
    cfg = task_folder(tmp_path, yaml_text)
    make(ROWS, cfg / "t" / "data") if make is saved else make(cfg)
    with pytest.raises(TaskConfigError, match=expected) as info:
        load_task(cfg, "t")
    assert "\n" not in str(info.value) and str(cfg / "t" / "task.yaml") in str(info.value)


def test_a_split_the_saved_dataset_is_not_is_refused(tmp_path: Path) -> None:
    cfg = task_folder(tmp_path, "dataset: {path: data, split: train}\nprompt: x\n")
    datasets.Dataset.from_list(ROWS, split=datasets.Split.TEST).save_to_disk(str(cfg / "t" / "data"))
    with pytest.raises(TaskConfigError, match=r"holds split 'test', not dataset.split 'train'; fix either"):
        load_task(cfg, "t")


@pytest.mark.parametrize("module", ["pyarrow", "datasets"])
def test_without_the_extra_the_line_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    path = "data" if module == "pyarrow" else "someone/arith"
    cfg = task_folder(tmp_path, f"dataset: {{path: {path}}}\nprompt: x\n")
    saved(ROWS, cfg / "t" / "data")
    monkeypatch.setitem(sys.modules, module, None)  # import fails as when it is not installed
    with pytest.raises(TaskConfigError, match=r"needs the datasets extra.*pip install 'llm-infer-dagster\[datasets\]'"):
        load_task(cfg, "t")
