"""OpenAI batch requests: the file's refusals (with the line), the request -> prompt and sampling mapping, and a
folder holding only requests.jsonl loading as the built-in task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.tasks import openai_batch
from llm_infer_dagster.tasks.loader import RowPrompt, TaskFiles, discover_tasks, load_task
from llm_infer_dagster.tasks.openai_batch import BASE_SAMPLING, BadRequest, read_requests, request_prompt
from llm_infer_dagster.tasks.versions import task_code_versions

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def req(url: str = CHAT, cid: str = "r1", **body: Any) -> dict[str, Any]:
    if "messages" not in body and "prompt" not in body:
        body = {("messages" if url == CHAT else "prompt"): [{"role": "user", "content": "hi"}] if url == CHAT
                else "Once", **body}  # fmt: skip
    return {"custom_id": cid, "method": "POST", "url": url, "body": body}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# -- the file -----------------------------------------------------------------------------------------------------


def test_read_requests_keeps_order_and_skips_blank_lines(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "r.jsonl", [json.dumps(req(cid="a")), "", "   ", json.dumps(req(cid="b"))])
    assert [r["custom_id"] for r in read_requests(f)] == ["a", "b"]


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("{not json", "line 2: not JSON"),
        ('["a list"]', "line 2: a JSON list, not a request object"),
        (json.dumps({"method": "POST", "url": CHAT, "body": {}}), "line 2: no custom_id; every request needs"),
        (json.dumps({"custom_id": 7, "url": CHAT}), "line 2: custom_id 7; every request needs a non-empty string"),
        (json.dumps({"custom_id": "", "url": CHAT}), 'line 2: custom_id ""'),
        (json.dumps(req(cid="a")), 'line 2: custom_id "a" again (first on line 1)'),
    ],
)
def test_a_line_without_a_usable_custom_id_refuses_the_file_naming_the_line(
    tmp_path: Path, line: str, says: str
) -> None:
    f = write_lines(tmp_path / "r.jsonl", [json.dumps(req(cid="a")), line, json.dumps(req(cid="c"))])
    with pytest.raises(TaskConfigError) as exc:
        read_requests(f)
    assert str(exc.value).startswith(f"{f} {says}"), str(exc.value)
    assert "\n" not in str(exc.value)


# -- one request --------------------------------------------------------------------------------------------------


def test_chat_request_maps_messages_and_sampling_fields() -> None:
    out = request_prompt(req(max_tokens=12, temperature=0, top_p=0.5, stop=["\n"], seed=3, presence_penalty=0.1,
                             top_k=5, model="gpt-x", user="me"))  # fmt: skip
    assert out == {
        "messages": [{"role": "user", "content": "hi"}],
        "sampling_params": {"temperature": 0.0, "top_p": 0.5, "stop": ["\n"], "seed": 3, "presence_penalty": 0.1,
                            "top_k": 5, "max_tokens": 12},
    }  # fmt: skip


def test_completion_request_maps_prompt_n_and_max_completion_tokens_wins() -> None:
    out = request_prompt(req(COMPLETIONS, prompt=["Once"], n=2, max_tokens=5, max_completion_tokens=9))
    assert out == {"prompt": "Once", "sampling_params": {"n": 2, "max_tokens": 9}}
    assert request_prompt(req(COMPLETIONS, prompt="x")) == {"prompt": "x"}  # nothing set: the task's defaults
    assert request_prompt(req(COMPLETIONS, prompt="x", temperature=None)) == {"prompt": "x"}  # null = default


def test_text_content_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    out = request_prompt(req(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": parts}]))
    assert out["messages"] == [{"role": "system", "content": "s"}, {"role": "user", "content": "a\nb"}]


SCHEMA = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}


@pytest.mark.parametrize(
    ("response_format", "structured"),
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}, {"json": SCHEMA}),
        ({"type": "json_object"}, {"json": {"type": "object"}}),
        ({"type": "text"}, None),
    ],
)
def test_response_format_becomes_structured_outputs(response_format: dict, structured: dict | None) -> None:
    out = request_prompt(req(response_format=response_format, max_tokens=20))
    assert out["sampling_params"].get("structured_outputs") == structured


def test_vllm_structured_outputs_field_passes_through() -> None:
    out = request_prompt(req(structured_outputs={"choice": ["yes", "no"]}))
    assert out["sampling_params"] == {"structured_outputs": {"choice": ["yes", "no"]}}


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        ({"custom_id": "x", "method": "POST", "url": "/v1/moderations", "body": {"input": "a"}}, "/v1/moderations"),
        ({"custom_id": "x", "method": "GET", "url": CHAT, "body": {}}, 'method "GET" is not supported'),
        ({"custom_id": "x", "method": "POST", "url": CHAT}, "no body"),
        ({"custom_id": "x", "method": "POST", "url": CHAT, "body": "hi"}, "body must be an object"),
        ({"custom_id": "x", "url": CHAT, "body": {"prompt": "a"}}, "body has no 'messages'"),
        (req(COMPLETIONS, prompt=[1, 2, 3]), "body.prompt must be a string"),
        (req(messages=[]), "body.messages must be a non-empty list"),
        (req(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "only text content parts"),
        (req(temperature="hot"), 'body: "temperature" must be a number, got "hot"'),
        (req(max_tokens=0), 'body: "max_tokens" must be at least 1, got 0'),
        (req(n=2, temperature=0), '"n" = 2 with "temperature" 0'),
        (req(max_token=5), 'body.max_token is not a field llm-infer run-batch knows (did you mean "max_tokens"?)'),
        (req(logprobs=True), "body.logprobs = true is not supported"),
        (req(tools=[{"type": "function"}]), "body.tools"),
        (req(stream=True), "must not be sent in stream mode"),
        (req(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), '"json_schema" needs'),
        (req(response_format={"type": "yaml"}), 'response_format.type "yaml" is not supported'),
        (
            req(response_format={"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}),
            '"json" is not a valid JSON schema',
        ),
        (req(response_format={"type": "json_object"}, structured_outputs={"regex": "a"}), "not both"),
    ],
)
def test_a_bad_request_is_that_requests_error(request_: dict, says: str) -> None:
    with pytest.raises(BadRequest) as exc:
        request_prompt(request_)
    assert says in str(exc.value), str(exc.value)


def test_neutral_values_of_unsupported_fields_pass() -> None:
    out = request_prompt(req(logprobs=False, stream=False, tool_choice="none", logit_bias={}, max_tokens=4))
    assert out["sampling_params"] == {"max_tokens": 4}


# -- the folder as a task -----------------------------------------------------------------------------------------


def test_a_folder_with_only_requests_jsonl_is_the_builtin_task(tmp_path: Path) -> None:
    folder = tmp_path / "batch1"
    folder.mkdir()
    write_lines(folder / "requests.jsonl", [json.dumps(req(cid="a", max_tokens=3)), json.dumps(req(cid="b"))])
    (tmp_path / "default_sampling_params.json").write_text('{"temperature": 0.2, "max_tokens": 99, "top_k": 50}')
    (tmp_path / "empty").mkdir()
    assert discover_tasks(tmp_path) == ["batch1"]
    # the seed's renaming flags are for task files; the built-in task keeps its own functions
    task = load_task(tmp_path, "batch1", TaskFiles(format_prompt_func="other"))
    assert task.is_openai_batch and task.module is openai_batch
    assert task.sampling_params == {**BASE_SAMPLING, "top_p": 1.0}  # OpenAI's, not default_sampling_params.json
    files = task.list_files(task.input_path(None))
    assert files == [str(folder / "requests.jsonl")]
    rows = task.read_rows(files[0])
    assert [task.format_prompt(r) for r in rows] == [
        RowPrompt([{"role": "user", "content": "hi"}], {"max_tokens": 3}),
        RowPrompt([{"role": "user", "content": "hi"}]),
    ]
    assert task.extract_answer("text") == "text"
    versions = task_code_versions(task.module, task.folder, task.sampling_params, model_type="hf", model_path=None)
    assert len(set(versions.values())) == 4


def test_the_folders_sampling_params_json_goes_over_openais_defaults(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    folder.mkdir()
    write_lines(folder / "requests.jsonl", [json.dumps(req())])
    (folder / "sampling_params.json").write_text('{"max_tokens": 64}')
    assert load_task(tmp_path, "b").sampling_params == {**BASE_SAMPLING, "max_tokens": 64}


def test_a_broken_requests_file_names_the_file_and_line_not_the_package(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    folder.mkdir()
    write_lines(folder / "requests.jsonl", [json.dumps(req()), json.dumps({"url": CHAT})])
    task = load_task(tmp_path, "b")
    with pytest.raises(TaskConfigError) as exc:
        task.read_rows(str(folder / "requests.jsonl"))
    assert str(exc.value).startswith(f"{folder / 'requests.jsonl'} line 2: no custom_id")


def test_a_task_file_beside_requests_jsonl_wins(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    folder.mkdir()
    write_lines(folder / "requests.jsonl", [json.dumps(req())])
    (folder / "task_config.py").write_text(
        "def get_file_list(p):\n    return []\n\ndef read_file(p):\n    return []\n\n"
        "def format_prompt(r):\n    return 'x'\n\ndef extract_answer(r):\n    return r\n"
    )
    assert not load_task(tmp_path, "t").is_openai_batch
