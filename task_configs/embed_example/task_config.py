"""Embeddings: one vector per row (task_settings.json: "task": "embed").

The completions hold each row's embedding (a fixed-size float column, L2-normalized, pooled as vLLM pools the
model: a sentence-transformers folder's pooling config, else the last token). extract_answer gets the vector
(a list of floats) instead of text; here it keeps it, rounded, as the row's answer.
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def get_file_list(input_path):
    root = input_path if input_path and os.path.isdir(input_path) else os.path.join(HERE, "data")
    return sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".jsonl"))


def read_file(file_path):
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(org_data):
    return org_data["text"]


def extract_answer(embedding):
    return [round(x, 5) for x in embedding]
