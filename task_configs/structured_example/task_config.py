"""Structured outputs and per-row sampling: every completion is JSON that validates against the schema in
sampling_params.json, except rows marked triage_only, whose format_prompt returns a dict with their own
sampling_params: a choice of three words and fewer tokens."""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
CATEGORIES = ["bug", "feature", "question"]


def get_file_list(input_path):
    root = input_path if input_path and os.path.isdir(input_path) else os.path.join(HERE, "data")
    return sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".jsonl"))


def read_file(file_path):
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(org_data):
    messages = [
        {"role": "system", "content": "Classify the support ticket as bug, feature or question."},
        {"role": "user", "content": org_data["text"]},
    ]
    if org_data.get("triage_only"):
        # This row only needs the category: one of three words, a few tokens, instead of the task's JSON.
        own = {"max_tokens": 12, "structured_outputs": {"choice": CATEGORIES}}
        return {"messages": messages, "sampling_params": own}
    return {"messages": messages}


def extract_answer(model_response):
    if model_response in CATEGORIES:
        return {"category": model_response, "urgent": None}
    try:
        return json.loads(model_response)
    except ValueError:
        return None
