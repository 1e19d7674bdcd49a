"""Reward scores: one number per row from a 1-label score head ("task": "reward").

extract_answer gets the raw score (a float) instead of text; score() passes it on, so the report holds the
mean reward of every model side by side.
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
    return [{"role": "user", "content": org_data["prompt"]}, {"role": "assistant", "content": org_data["response"]}]


def extract_answer(reward):
    return reward


def score(answer, org_data):
    return answer
