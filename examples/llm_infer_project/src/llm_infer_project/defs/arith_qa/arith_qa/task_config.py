"""An llm-infer task: where rows come from, the prompt of a row, and the answer in a completion."""

import json
import os
import re


def get_file_list(input_path):
    """The input files (input_path: the component's input_path, else this folder's data/)."""
    folder = input_path or os.path.join(os.path.dirname(__file__), "data")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jsonl"))


def read_file(file_path):
    """The rows of one input file: here, one JSON object a line."""
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(org_data):
    """The prompt of one row: a string, or chat messages [{"role": ..., "content": ...}]."""
    return [{"role": "user", "content": f"How much is {org_data['question']}? Answer with a number."}]


def extract_answer(model_response):
    """The answer in one completion (None: not found)."""
    found = re.search(r"-?\d+", model_response)
    return found.group(0) if found else None


def score(answer, org_data):
    """Optional: a number per answered row (here 1 for right, 0 for wrong), summed up by the report."""
    return float(answer == str(org_data["answer"]))
