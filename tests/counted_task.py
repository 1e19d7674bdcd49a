"""A seed-style task that counts its reads, and its input folder: shared by the manifest and registry tests
(imported as a plain module: pytest puts tests/ on sys.path). No Dagster."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from llm_infer_dagster.shards.store import TaskStore
from llm_infer_dagster.tasks.loader import TaskConfig, load_task

TASK = "counted"

# A seed-style task that appends the base name of every file it reads to reads.log next to it.
COUNTING_TASK = """
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def get_file_list(input_path):
    return sorted(os.path.join(input_path, f) for f in os.listdir(input_path) if f.endswith(".jsonl"))


def read_file(file_path):
    with open(os.path.join(HERE, "reads.log"), "a", encoding="utf-8") as log:
        log.write(os.path.basename(file_path) + "\\n")
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(org_data):
    return org_data["q"]


def extract_answer(model_response):
    return None
"""


class CountedTask:
    """The counting task under ``root/cfg``, its input folder ``root/in`` and its output dir ``root/out``."""

    def __init__(self, root: Path) -> None:
        self.cfg = root / "cfg"
        self.input = root / "in"
        self.out = root / "out"
        folder = self.cfg / TASK
        folder.mkdir(parents=True)
        (folder / "task_config.py").write_text(textwrap.dedent(COUNTING_TASK))
        self.input.mkdir()
        self.reads_log = folder / "reads.log"
        self.task: TaskConfig = load_task(self.cfg, TASK)
        self.store = TaskStore(self.out, TASK)

    def write(self, name: str, rows: int, start: int = 0, append: bool = False) -> None:
        with (self.input / name).open("a" if append else "w") as f:
            for i in range(start, start + rows):
                f.write(json.dumps({"q": f"{name}-{i}"}) + "\n")

    def reads(self) -> list[str]:
        return self.reads_log.read_text().splitlines() if self.reads_log.exists() else []
