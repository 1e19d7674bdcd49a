"""Structured-output cases both real-engine test modules run (tests/engines/test_{hf,vllm}_structured.py)."""

from __future__ import annotations

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["yes", "no", "maybe"]}, "sure": {"type": "boolean"}},
    "required": ["label", "sure"],
    "additionalProperties": False,
}

PROMPTS = [
    "What is 3 + 4?",
    "Hello",
    "The capital of France is Paris. The capital of Germany is",
    "Q: Which city is the capital of Peru? A:",
]

CHAT = [[{"role": "user", "content": "Is the sky blue?"}]]

#: kind -> (spec, max_tokens): every completion must satisfy the spec (compact JSON: a random model fills any
#: whitespace the JSON grammar allows until max_tokens)
CASES = {
    "json": ({"json": SCHEMA, "disable_any_whitespace": True}, 64),
    "choice": ({"choice": ["red", "green", "blue"]}, 16),
    "regex": ({"regex": r"[a-c]{3}-[0-9]{2}"}, 16),
    "grammar": ({"grammar": 'root ::= "A" | "B" "C" | "D"+'}, 8),
}
