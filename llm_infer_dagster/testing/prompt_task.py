"""A task folder whose rows are ready prompts, for holding ``llm-infer`` against bare scripts on the same input.

:func:`write_prompt_task` writes ``task_config.py`` (``format_prompt`` returns the row's ``prompt``: text or chat
messages), ``prompts.jsonl`` (one row per prompt, with its index ``i``) and ``sampling_params.json``.
:func:`completions_in_order` reads the exact completion texts back from the run's seed-layout results.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["completions_in_order", "write_prompt_task"]

TASK_CONFIG = '''"""Rows are ready prompts (text or chat messages); the answer is the stripped completion."""
import json
import os


def get_file_list(input_path):
    return [os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts.jsonl")]


def read_file(file_path):
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(org_data):
    return org_data["prompt"]


def extract_answer(model_response):
    return model_response.strip() or None
'''


def write_prompt_task(task_dir: Path, prompts: Sequence[Any], sampling: Mapping[str, Any]) -> Path:
    """Write the task folder ``task_dir`` (its name is the ``--task_name``) holding ``prompts`` in order."""
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / "task_config.py").write_text(TASK_CONFIG, encoding="utf-8")
    rows = "".join(json.dumps({"i": i, "prompt": p}) + "\n" for i, p in enumerate(prompts))
    (task_dir / "prompts.jsonl").write_text(rows, encoding="utf-8")
    (task_dir / "sampling_params.json").write_text(json.dumps(dict(sampling)), encoding="utf-8")
    return task_dir


def completions_in_order(output: Path, count: int) -> list[dict[str, Any]]:
    """The ``count`` rows of ``output/results/infer/*.json`` in prompt order (``model_response_raw`` is the exact
    text); a missing or duplicated row raises."""
    rows = [r for f in sorted((output / "results" / "infer").glob("*.json")) for r in json.loads(f.read_text())]
    by_index = {r["origin_data"]["i"]: r for r in rows}
    if sorted(by_index) != list(range(count)) or len(rows) != count:
        raise AssertionError(f"{output}: expected rows 0..{count - 1}, got {sorted(by_index)}")
    return [by_index[i] for i in range(count)]
