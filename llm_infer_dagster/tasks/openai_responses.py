"""The OpenAI batch output format: one line per request, shaped as vLLM's ``run-batch`` writes them.

A request that ran::

    {"id": "batch_req_...", "custom_id": "q1", "error": null,
     "response": {"status_code": 200, "request_id": "req_...", "body": {"id": "chatcmpl-...",
       "object": "chat.completion", "created": 1764650000, "model": "/models/qwen",
       "choices": [{"index": 0, "message": {"role": "assistant", "content": "..."}, "logprobs": null,
                    "finish_reason": "stop"}],
       "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}}}

An embeddings request that ran has an OpenAI embeddings body: ``{"id": "embd-...", "object": "list", "created":
..., "model": ..., "data": [{"index": 0, "object": "embedding", "embedding": [...]}], "usage": {"prompt_tokens":
N, "total_tokens": N}}``.

A request that did not (vLLM's shape: the HTTP status in ``response``, no body, the error object in ``error``)::

    {"id": "batch_req_...", "custom_id": "q2", "response": {"status_code": 400, "request_id": "req_...",
     "body": null}, "error": {"error": {"message": "...", "type": "BadRequestError", "param": null, "code": 400}}}

Ids are digests of the request and its result, not random: writing the file again gives the same bytes.
Pure logic: no Dagster, no engine, no files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from llm_infer_dagster.tasks.openai_batch import URLS

__all__ = ["BAD_REQUEST", "NOT_RUN", "embedding_line", "error_line", "response_line"]

#: Status codes and OpenAI error types: a request that cannot run as written; one whose shard did not finish.
BAD_REQUEST = (400, "BadRequestError")
NOT_RUN = (500, "InternalServerError")


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def error_line(custom_id: str, message: str, status: tuple[int, str] = BAD_REQUEST) -> dict[str, Any]:
    """The output line of a request that produced no completion."""
    code, kind = status
    h = _digest(custom_id, message)
    return {
        "id": f"batch_req_{h}",
        "custom_id": custom_id,
        "response": {"status_code": code, "request_id": f"req_{h}", "body": None},
        "error": {"error": {"message": message, "type": kind, "param": None, "code": code}},
    }


def response_line(
    request: Mapping[str, Any],
    texts: Sequence[str],
    finish_reasons: Sequence[str | None],
    prompt_tokens: int,
    completion_tokens: int,
    *,
    model: str,
    created: int,
) -> dict[str, Any]:
    """The output line of a request that ran: an OpenAI chat.completion or text_completion body, n choices."""
    custom_id = str(request["custom_id"])
    chat = URLS.get(str(request.get("url"))) == "chat"
    h = _digest(custom_id, json.dumps(list(texts), ensure_ascii=False), str(created))
    choices: list[dict[str, Any]] = []
    for i, (text, reason) in enumerate(zip(texts, finish_reasons, strict=True)):
        if chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                            "finish_reason": reason})  # fmt: skip
        else:
            choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": reason})
    body = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{h}",
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return {
        "id": f"batch_req_{h}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": f"req_{h}", "body": body},
        "error": None,
    }


def embedding_line(
    request: Mapping[str, Any], vector: Sequence[float], prompt_tokens: int, *, model: str, created: int
) -> dict[str, Any]:
    """The output line of a ``/v1/embeddings`` request that ran: an OpenAI embeddings list body, one vector."""
    custom_id = str(request["custom_id"])
    data = [float(x) for x in vector]
    h = _digest(custom_id, json.dumps(data), str(created))
    body = {
        "id": f"embd-{h}",
        "object": "list",
        "created": created,
        "model": model,
        "data": [{"index": 0, "object": "embedding", "embedding": data}],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return {
        "id": f"batch_req_{h}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": f"req_{h}", "body": body},
        "error": None,
    }
