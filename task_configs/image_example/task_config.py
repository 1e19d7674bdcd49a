"""Images in chat prompts: format_prompt returns a message whose content holds OpenAI-style image parts.

Each row names its image by a path relative to the row's input file (data/images/red.png here); a path may
also be absolute, a file:// URL or a data:image/...;base64 URL. The image's content is part of the row's data
version: replace an image and exactly its shard is redone. A missing or unreadable image is that row's error.
"""

import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
COLOUR_RE = re.compile(r"\b(red|green|blue|yellow)\b", re.IGNORECASE)


def get_file_list(input_path):
    root = input_path if input_path and os.path.isdir(input_path) else os.path.join(HERE, "data")
    return sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".jsonl"))


def read_file(file_path):
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(org_data):
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": org_data["image"]}},
                {"type": "text", "text": "What colour is this picture? Answer with one word."},
            ],
        }
    ]


def extract_answer(model_response):
    match = COLOUR_RE.search(model_response)
    return match.group(1).lower() if match else None


def score(answer, org_data):
    return float(answer == org_data["colour"])
