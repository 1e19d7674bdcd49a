"""OpenAI batch output lines: the shapes vLLM's run-batch writes, for chat, completions, n choices and errors."""

from __future__ import annotations

from llm_infer_dagster.tasks.openai_responses import NOT_RUN, error_line, response_line

CHAT = {"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}
TEXT = {"custom_id": "t1", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}


def test_chat_line_has_the_chat_completion_shape() -> None:
    line = response_line(CHAT, ["hello"], ["stop"], 7, 3, model="/m", created=1700000000)
    assert set(line) == {"id", "custom_id", "response", "error"}
    assert line["custom_id"] == "c1" and line["error"] is None
    response = line["response"]
    assert response["status_code"] == 200 and response["request_id"].startswith("req_")
    body = response["body"]
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["created"] == 1700000000 and body["model"] == "/m"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_completion_line_has_n_text_choices() -> None:
    line = response_line(TEXT, ["a", "b"], ["length", "stop"], 2, 9, model="m", created=1)
    body = line["response"]["body"]
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"] == [
        {"index": 0, "text": "a", "logprobs": None, "finish_reason": "length"},
        {"index": 1, "text": "b", "logprobs": None, "finish_reason": "stop"},
    ]
    assert body["usage"]["total_tokens"] == 11


def test_ids_are_stable_for_the_same_result_and_differ_for_another() -> None:
    one = response_line(TEXT, ["a"], ["stop"], 1, 1, model="m", created=5)
    assert one == response_line(TEXT, ["a"], ["stop"], 1, 1, model="m", created=5)
    assert one["id"] != response_line(TEXT, ["b"], ["stop"], 1, 1, model="m", created=5)["id"]


def test_error_lines_have_vllms_shape() -> None:
    line = error_line("x", "body: bad")
    assert line["custom_id"] == "x"
    assert line["response"]["status_code"] == 400 and line["response"]["body"] is None
    assert line["error"] == {"error": {"message": "body: bad", "type": "BadRequestError", "param": None, "code": 400}}
    unfinished = error_line("x", "not run", NOT_RUN)
    assert unfinished["response"]["status_code"] == 500 and unfinished["error"]["error"]["code"] == 500
