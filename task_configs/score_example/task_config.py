"""Scoring: arithmetic questions with their gold answer; score() compares the extracted answer with it.

score(answer, org_data) gets what extract_answer returned and the row read_file returned; it returns a number
(here 1.0 or 0.0: accuracy) or None for a row that has no score. The answers carry it in their `score` column
and the task's `report` asset puts the mean, with a 95% confidence interval, of every model side by side.
"""

import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
ANSWER_RE = re.compile(r"answer is\s*(-?\d+)", re.IGNORECASE)


def get_file_list(input_path):
    root = input_path if input_path and os.path.isdir(input_path) else os.path.join(HERE, "data")
    return sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".jsonl"))


def read_file(file_path):
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(org_data):
    return f"Question: {org_data['question']}\nEnd with 'The answer is N'.\nAnswer:"


def extract_answer(model_response):
    match = ANSWER_RE.search(model_response)
    return int(match.group(1)) if match else None


def score(answer, org_data):
    return float(answer == org_data["gold"])
