"""Classification: label probabilities per row from a *ForSequenceClassification model ("task": "classify").

extract_answer gets {label: probability} (the model's id2label names, in label order) instead of text; here
it keeps the most likely label, and score() compares it with the row's gold label (accuracy in the report).
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


def extract_answer(probs):
    return max(probs, key=probs.get)


def score(answer, org_data):
    return float(answer == org_data["label"])
