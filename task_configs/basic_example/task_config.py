"""The seed's basic shape: a text file of questions, one per line, answered as plain text (no extraction)."""

import os

HERE = os.path.dirname(os.path.abspath(__file__))


def get_file_list(input_path):
    if input_path and os.path.isdir(input_path):
        return sorted(os.path.join(input_path, f) for f in os.listdir(input_path) if f.endswith(".txt"))
    return [os.path.join(HERE, "data", "questions.txt")]


def read_file(file_path):
    with open(file_path, encoding="utf-8") as f:
        return [{"question": line.strip()} for line in f if line.strip()]


def format_prompt(org_data):
    return org_data["question"]


def extract_answer(model_response):
    return None
