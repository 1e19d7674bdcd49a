"""The built-in OpenAI batch task: a requests file in the OpenAI batch input format (vLLM ``run-batch``'s) as a task.

Each line of ``requests.jsonl`` is one request::

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32, "temperature": 0}}

This module is the task's four seed functions (``get_file_list``, ``read_file``, ``format_prompt``,
``extract_answer``), so a requests file becomes shards and the usual raw -> prompts -> completions -> answers
assets like any task folder; ``tasks/loader.py`` uses it for a folder holding a ``requests.jsonl`` and no
``task_config.py``. The output lines are ``tasks/openai_responses.py``'s.

What is wrong with a *file* is refused before any work, naming the file and the line: a line that is not a JSON
object, a request without a string ``custom_id`` (its output line could not say which request it answers), a
``custom_id`` twice (the output is matched to the requests by it). What is wrong with one *request* (no body,
an unknown url, a bad sampling value) is that request's error (``BadRequest`` from ``format_prompt``): its
output line carries it, the others run.

A file of ``/v1/embeddings`` requests (``{"input": "text"}``) runs as the ``embed`` task
(``engines/pooling.py``); one file holds one kind of request.

Sampling: a request's body fields become the platform's sampling parameters (vLLM's names; ``max_tokens``,
``max_completion_tokens``, ``temperature``, ``top_p``, ``n``, ``stop``, ``seed``, the penalties, vLLM's extra
fields such as ``top_k``), ``response_format`` (``json_schema`` / ``json_object``) becomes ``structured_outputs``,
under :data:`BASE_SAMPLING` (OpenAI's defaults) and a ``sampling_params.json`` in the folder, if any.

Pure logic: no Dagster, no engine.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.tasks.sampling import check_combination, validate_sampling_params

__all__ = [
    "BASE_SAMPLING",
    "REQUESTS_FILE",
    "URLS",
    "BadRequest",
    "extract_answer",
    "format_prompt",
    "get_file_list",
    "read_file",
    "read_requests",
    "request_prompt",
    "task_kind",
]

#: The file that makes a folder an OpenAI batch task folder.
REQUESTS_FILE = "requests.jsonl"

#: url -> the kind of request (what the body holds and what its response looks like).
URLS: dict[str, str] = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/embeddings": "embedding"}
#: The url of embedding requests: a file of them runs as the ``embed`` task (one kind of request per file).
EMBEDDINGS_URL = "/v1/embeddings"
#: Body fields of an embeddings request besides ``input``: ignored, or accepted only at the value that asks for
#: what the platform gives (float vectors of the model's own size).
_EMBED_IGNORED = ("model", "user")
_EMBED_OFF: dict[str, tuple[Any, ...]] = {"encoding_format": (None, "float"), "dimensions": (None,)}

#: What a request that sets nothing samples with: OpenAI's defaults (no top-k), and OpenAI's completions
#: default of 16 tokens (vLLM's chat default, the model's remaining context, is not known before the model loads).
#: A ``sampling_params.json`` in the task folder goes over these; ``default_sampling_params.json`` does not apply.
BASE_SAMPLING: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": 16}

#: Body fields that are sampling parameters of the same name (OpenAI's, then vLLM's extra sampling fields).
SAMPLING_FIELDS = (
    "temperature", "top_p", "n", "stop", "seed", "presence_penalty", "frequency_penalty",
    "top_k", "min_p", "repetition_penalty", "min_tokens", "stop_token_ids", "ignore_eos", "skip_special_tokens",
    "spaces_between_special_tokens", "include_stop_str_in_output", "bad_words", "structured_outputs",
)  # fmt: skip
#: Body fields that change nothing here (who asked, where to store it, the served model's name).
IGNORED_FIELDS = ("model", "user", "store", "metadata", "service_tier", "stream", "stream_options")
#: Body fields that are accepted only at a value that asks for nothing; anything else is that request's error.
_OFF: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
    "logit_bias": (None, {}), "suffix": (None, ""), "tools": (None, []), "tool_choice": (None, "none"),
    "functions": (None, []), "function_call": (None, "none"), "parallel_tool_calls": (None, True, False),
}  # fmt: skip
_BODY_KEYS = {"chat": "messages", "completion": "prompt", "embedding": "input"}
_KNOWN = (*SAMPLING_FIELDS, "max_tokens", "max_completion_tokens", "response_format", *IGNORED_FIELDS, *_OFF)
_LINE_SHAPE = '{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}'


class BadRequest(ValueError):
    """One request cannot be run as written; its output line carries the message (HTTP 400, like vLLM's)."""


# -- the file ---------------------------------------------------------------------------------------------------


def read_requests(path: str | Path) -> list[dict[str, Any]]:
    """The requests of one file, in order; blank lines are skipped (as vLLM's run-batch does).

    Raises :class:`TaskConfigError` naming the file and line for a line that is not a JSON object, has no string
    ``custom_id``, or repeats one: such a file is refused before any work.
    """
    rows: list[dict[str, Any]] = []
    first_seen: dict[str, int] = {}
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed below; OSError named with the file
    except OSError as exc:
        raise TaskConfigError(f"{path}: cannot read the requests file: {exc.strerror or exc}") from None
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskConfigError(
                    f"{path} line {n}: not JSON ({exc.msg} at column {exc.colno}); each line must be one request "
                    f"object like {_LINE_SHAPE}"
                ) from None
            if not isinstance(request, dict):
                raise TaskConfigError(
                    f"{path} line {n}: a JSON {type(request).__name__}, not a request object like {_LINE_SHAPE}"
                )
            custom_id = request.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                got = "no custom_id" if custom_id is None else f"custom_id {json.dumps(custom_id)}"
                raise TaskConfigError(
                    f'{path} line {n}: {got}; every request needs a non-empty string "custom_id" (its output '
                    "line carries it, so results can be matched to requests)"
                )
            if custom_id in first_seen:
                raise TaskConfigError(
                    f"{path} line {n}: custom_id {json.dumps(custom_id)} again (first on line {first_seen[custom_id]});"
                    " custom_ids must be unique: results are matched to requests by them"
                )
            first_seen[custom_id] = n
            rows.append(request)
    return rows


# -- one request ------------------------------------------------------------------------------------------------


def _text(content: Any, where: str) -> str:
    """A message's content as text: a string, or a list of text parts (joined with newlines, as vLLM does)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise BadRequest(f"{where}: only text content parts are supported, got {json.dumps(kind)}")
            texts.append(part["text"])
        return "\n".join(texts)
    raise BadRequest(f"{where}: content must be a string or a list of text parts, got {json.dumps(content)[:80]}")


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRequest('body.messages must be a non-empty list of {"role": ..., "content": ...}')
    out = []
    for i, m in enumerate(value):
        where = f"body.messages[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f'{where} must be an object with a string "role" and a "content"')
        out.append({"role": m["role"], "content": _text(m.get("content"), where)})
    return out


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if not isinstance(value, str):
        raise BadRequest(
            "body.prompt must be a string (or a list of one string); token ids and several prompts per request "
            "are not supported: give each prompt its own line"
        )
    return value


def _embedding_input(body: dict[str, Any]) -> str:
    """The text of an embeddings request; fields it cannot honour are that request's error."""
    for field, value in body.items():
        if field == "input" or field in _EMBED_IGNORED:
            continue
        if field not in _EMBED_OFF:
            raise BadRequest(f"body.{field} is not supported for {EMBEDDINGS_URL}")
        if value not in _EMBED_OFF[field]:
            raise BadRequest(
                f"body.{field} {json.dumps(value)} is not supported for {EMBEDDINGS_URL}: the vectors are floats "
                "of the model's own size; leave it out"
            )
    value = body["input"]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if not isinstance(value, str) or not value:
        raise BadRequest(
            "body.input must be a non-empty string (or a list of one string); token ids and several inputs per "
            "request are not supported: give each input its own line"
        )
    return value


def task_kind(path: str | Path) -> str:
    """``"embed"`` for a requests file of ``/v1/embeddings`` requests, ``"generate"`` for one without any; a file
    that mixes them is refused (one engine runs a file: a pooling engine embeds, a generating one writes text)."""
    requests: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:  # a broken line is read_requests' to name, when the rows are read
        for text in fh:
            try:
                request = json.loads(text) if text.strip() else None
            except json.JSONDecodeError:
                continue
            if isinstance(request, dict):
                requests.append(request)
    embeds = [r for r in requests if r.get("url") == EMBEDDINGS_URL]
    if embeds and len(embeds) < len(requests):
        other = next(r for r in requests if r.get("url") != EMBEDDINGS_URL)
        raise TaskConfigError(
            f"{path}: mixes {EMBEDDINGS_URL} requests (custom_id {json.dumps(embeds[0].get('custom_id'))}) with "
            f"{json.dumps(other.get('url'))} ones (custom_id {json.dumps(other.get('custom_id'))}); one engine runs a "
            "file: put the embeddings requests in a file of their own"
        )
    return "embed" if embeds else "generate"


def _structured(response_format: Any) -> dict[str, Any] | None:
    """``response_format`` as ``structured_outputs`` (vLLM maps it the same way)."""
    if not isinstance(response_format, dict):
        raise BadRequest(f"body.response_format must be an object, got {json.dumps(response_format)[:80]}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json": {"type": "object"}}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            raise BadRequest('body.response_format: "json_schema" needs {"json_schema": {"schema": {...}}}')
        return {"json": schema}
    raise BadRequest(
        f"body.response_format.type {json.dumps(kind)} is not supported (text, json_object or json_schema)"
    )


def request_sampling(body: dict[str, Any]) -> dict[str, Any]:
    """The sampling parameters a request body asks for (only those it sets), validated like sampling_params.json.

    Raises :class:`BadRequest` naming the field for an unknown field, an unsupported feature or a bad value.
    A field set to null is left out, as OpenAI reads null as "the default".
    """
    for key, value in body.items():
        if key in _OFF and value not in _OFF[key]:
            raise BadRequest(f"body.{key} = {json.dumps(value)[:80]} is not supported by llm-infer run-batch")
        if key == "stream" and value not in (None, False):
            raise BadRequest("body.stream: a batch request must not be sent in stream mode")
        if key not in _KNOWN and key not in _BODY_KEYS.values():
            close = difflib.get_close_matches(key, _KNOWN, n=1, cutoff=0.7)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise BadRequest(f"body.{key} is not a field llm-infer run-batch knows{hint}")
    params = {k: body[k] for k in SAMPLING_FIELDS if body.get(k) is not None}
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    if body.get("response_format") is not None:
        if "structured_outputs" in params:
            raise BadRequest("body: give response_format or structured_outputs, not both")
        structured = _structured(body["response_format"])
        if structured is not None:
            params["structured_outputs"] = structured
    try:
        checked = validate_sampling_params(params, "body")
        check_combination({**BASE_SAMPLING, **checked}, "body")
    except TaskConfigError as exc:
        raise BadRequest(str(exc)) from None
    return checked


def request_prompt(request: dict[str, Any]) -> dict[str, Any]:
    """A request as ``format_prompt``'s dict: ``{"messages" | "prompt": ..., "sampling_params": {...}}``.

    Raises :class:`BadRequest` (that request's error) for a method other than POST, an unknown url, a missing
    or malformed body, or sampling fields that are not valid.
    """
    if request.get("method", "POST") != "POST":
        raise BadRequest(f"method {json.dumps(request.get('method'))} is not supported; batch requests are POST")
    url = request.get("url")
    if url not in URLS:
        raise BadRequest(f"url {json.dumps(url)} is not supported; use {' or '.join(URLS)}")
    kind = URLS[url]
    body = request.get("body")
    if not isinstance(body, dict):
        raise BadRequest("no body" if body is None else f"body must be an object, got {type(body).__name__}")
    key = _BODY_KEYS[kind]
    if key not in body:
        raise BadRequest(f"body has no {key!r}; a {url} request needs one")
    if kind == "embedding":
        return {"prompt": _embedding_input(body)}
    other = _BODY_KEYS["completion" if kind == "chat" else "chat"]
    if other in body:
        raise BadRequest(f"body.{other} does not go with {url}")
    prompt: Any = _messages(body[key]) if kind == "chat" else _prompt(body[key])
    sampling = request_sampling({k: v for k, v in body.items() if k != key})
    out: dict[str, Any] = {key: prompt}
    if sampling:
        out["sampling_params"] = sampling
    return out


# -- the four seed functions ------------------------------------------------------------------------------------


def get_file_list(input_path: str | None) -> list[str]:
    """The requests file itself, or every ``*.jsonl`` in a folder (sorted). The loader's default: the folder's file."""
    if input_path is None:
        raise TaskConfigError(f"no requests file: put a {REQUESTS_FILE} in the task folder or pass --input_path")
    path = Path(input_path)
    if path.is_dir():
        return [str(p) for p in sorted(path.glob("*.jsonl")) if p.is_file()]
    return [str(path)]


def read_file(file_path: str) -> list[dict[str, Any]]:
    """Each request line is one row, as written (so an edited request makes its shard stale)."""
    return read_requests(file_path)


def format_prompt(org_data: dict[str, Any]) -> dict[str, Any]:
    """The request's prompt and sampling parameters; a request that cannot run raises :class:`BadRequest`."""
    return request_prompt(org_data)


def extract_answer(response: Any) -> Any:
    """The first choice's text (an embeddings request's vector): the answers asset holds what the model said (the
    output file holds it all)."""
    return response
