"""Question/answer: JSON Lines of arithmetic questions; extract_answer parses 'The answer is N' with a regex."""

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
    with open(os.path.join(HERE, "prompt_template.txt"), encoding="utf-8") as f:
        template = f.read()
    return template.format(question=org_data["question"])


def extract_answer(model_response):
    match = ANSWER_RE.search(model_response)
    return int(match.group(1)) if match else None
