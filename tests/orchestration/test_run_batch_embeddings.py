"""`llm-infer run-batch` with `/v1/embeddings` requests: a file of them runs as the embed task and writes
OpenAI-shaped embedding lines; a request that asks for what the platform does not do is its own error line;
a file that mixes embeddings with text requests is one line before any work."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from tests_support import REPO, cli_env

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.tasks.openai_batch import BadRequest, request_prompt, task_kind
from llm_infer_dagster.tasks.openai_responses import embedding_line

EMBED = "/v1/embeddings"


def line(cid: str, url: str = EMBED, **body: object) -> str:
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body})


def test_an_embeddings_request_is_its_input() -> None:
    assert request_prompt(json.loads(line("a", input="hello", model="m", encoding_format="float"))) == {
        "prompt": "hello"
    }
    assert request_prompt(json.loads(line("a", input=["one"]))) == {"prompt": "one"}
    for body, says in (
        ({"input": ["a", "b"]}, "several inputs per request are not supported"),
        ({"input": [1, 2]}, "body.input must be a non-empty string"),
        ({"input": "a", "encoding_format": "base64"}, 'body.encoding_format "base64" is not supported'),
        ({"input": "a", "dimensions": 8}, "body.dimensions 8 is not supported"),
        ({"input": "a", "temperature": 0}, "body.temperature is not supported for /v1/embeddings"),
    ):
        with pytest.raises(BadRequest, match=says):
            request_prompt(json.loads(line("a", **body)))


def test_a_file_of_embeddings_is_the_embed_task_and_a_mixed_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join([line("a", input="x"), line("b", input="y")]) + "\n")
    assert task_kind(path) == "embed"
    path.write_text("\n".join([line("a", input="x"), line("c", "/v1/completions", prompt="p")]) + "\n")
    with pytest.raises(TaskConfigError, match=r'mixes /v1/embeddings requests \(custom_id "a"\)') as info:
        task_kind(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    path.write_text(line("c", "/v1/completions", prompt="p") + "\n")
    assert task_kind(path) == "generate"


def test_the_embedding_line_is_openais_shape() -> None:
    out = embedding_line({"custom_id": "q"}, [0.6, 0.8], 5, model="m", created=7)
    assert out["custom_id"] == "q" and out["error"] is None and out["response"]["status_code"] == 200
    assert out["response"]["body"] == {
        "id": out["response"]["body"]["id"], "object": "list", "created": 7, "model": "m",
        "data": [{"index": 0, "object": "embedding", "embedding": [0.6, 0.8]}],
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }  # fmt: skip
    assert embedding_line({"custom_id": "q"}, [0.6, 0.8], 5, model="m", created=7) == out  # same bytes again


@pytest.mark.slow
def test_run_batch_writes_embedding_lines(tmp_path: Path, tiny_model_path: str) -> None:
    requests = tmp_path / "requests.jsonl"
    texts = ["The cat sat on the mat.", "Paris is the capital of France.", "one two three"]
    lines = [line(f"e{i}", input=t, model="tiny") for i, t in enumerate(texts)]
    lines.append(line("b64", input="x", encoding_format="base64"))
    requests.write_text("\n".join(lines) + "\n")
    out_file = tmp_path / "results.jsonl"
    r = subprocess.run(
        [sys.executable, "-m", "llm_infer_dagster", "run-batch", "-i", str(requests), "-o", str(out_file),
         "--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu", "--no_progress", "--shard_size", "2"],
        capture_output=True, text=True, env=cli_env(), timeout=600, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert [o["custom_id"] for o in out] == ["e0", "e1", "e2", "b64"]
    for o in out[:3]:
        body = o["response"]["body"]
        assert o["error"] is None and body["object"] == "list" and body["model"] == tiny_model_path
        (item,) = body["data"]
        assert item["object"] == "embedding" and item["index"] == 0 and len(item["embedding"]) == 128
        assert math.isclose(sum(x * x for x in item["embedding"]), 1.0, abs_tol=1e-4)
        assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    assert out[0]["response"]["body"]["data"][0]["embedding"] != out[1]["response"]["body"]["data"][0]["embedding"]
    assert out[3]["response"]["status_code"] == 400 and "base64" in out[3]["error"]["error"]["message"]
