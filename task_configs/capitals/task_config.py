"""Capitals: a chat question per country, scored against the known capital (the demo's scored task).

format_prompt returns chat messages, rendered with the model's chat template. extract_answer takes the
words after the first "is" ("The capital of France is Paris." -> "Paris"); score compares them with the gold
capital, ignoring case and accents, so the report shows the model's accuracy (1.0 or 0.0 per row).
"""

import json
import os
import re
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
ANSWER_RE = re.compile(r"\bis\s+([^.,;\n]+)")


def get_file_list(input_path):
    root = input_path if input_path and os.path.isdir(input_path) else os.path.join(HERE, "data")
    return sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".jsonl"))


def read_file(file_path):
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(org_data):
    question = f"What is the capital of {org_data['country']}? Answer with the city name only."
    return [{"role": "user", "content": question}]


def extract_answer(model_response):
    match = ANSWER_RE.search(model_response)
    return match.group(1).strip() if match else None


def _normal(text):
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(plain.lower().split())


def score(answer, org_data):
    return float(_normal(answer) == _normal(org_data["capital"]))
