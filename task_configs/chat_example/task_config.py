"""Chat messages: format_prompt returns [{"role", "content"}]; the engine applies the model's own chat template."""

import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
LABEL_RE = re.compile(r"\b(positive|negative|neutral)\b", re.IGNORECASE)


def get_file_list(input_path):
    # The data lives in data/, apart from the task's own sampling_params.json (also a .json file).
    root = input_path if input_path and os.path.isdir(input_path) else os.path.join(HERE, "data")
    return sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".json"))


def read_file(file_path):
    with open(file_path, encoding="utf-8") as f:
        return json.load(f)


def format_prompt(org_data):
    return [
        {"role": "system", "content": "Label the sentiment of the review as positive, negative or neutral."},
        {"role": "user", "content": org_data["review"]},
    ]


def extract_answer(model_response):
    match = LABEL_RE.search(model_response)
    return {"label": match.group(1).lower()} if match else None
