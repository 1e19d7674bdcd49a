"""The pool <-> worker messages: every kind survives its codec, and anything that is not exactly one of this
version's messages is refused with an error naming what is wrong (by the codec, and by a running worker)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from llm_infer_dagster.engines.base import Completion
from llm_infer_dagster.engines.spec import EngineSpec
from llm_infer_dagster.runtime import worker
from llm_infer_dagster.runtime.messages import (
    FROM_WORKER,
    TO_WORKER,
    Done,
    Exited,
    Failed,
    Fatal,
    Job,
    Loaded,
    Message,
    ProtocolError,
    Ready,
    Setup,
    Stop,
    decode,
    encode,
)

SPEC = EngineSpec(model_type="vllm", model_path="/models/m", dtype="float32", engine_args={"max_num_seqs": 8})
EVERY_KIND: list[Message] = [
    Setup(worker=1, engine=SPEC, sampling={"temperature": 0, "stop": ["\n"]}, prefetch=2),
    Job(shard="f-00000001-00002", prompts="/p/a.parquet", output="/c/a.parquet"),
    Stop(),
    Loaded(seconds=1.25, pid=4242),
    Ready(),
    Done(
        shard="f-1",
        rows=3,
        errors=1,
        prompt_tokens=30,
        completion_tokens=12,
        seconds=0.5,
        tuning={"knob": "max_num_seqs", "width": 64, "default": 256, "state": "trying", "trials": {"32": 410.5}},
    ),  # fmt: skip
    Failed(shard="f-1", error="RuntimeError: boom", trace="Traceback ..."),
    Fatal(error="engine unusable", trace="Traceback ..."),
]


def test_every_kind_is_covered() -> None:
    assert {m.kind for m in EVERY_KIND} == {cls.kind for cls in (*TO_WORKER, *FROM_WORKER)}
    assert len(EVERY_KIND) == len({m.kind for m in EVERY_KIND})


def test_a_field_added_with_a_default_may_be_absent() -> None:
    """An older worker's 'done' (no ``tuning``) still reads; a required field missing is still refused."""
    line = '{"kind": "done", "shard": "a", "rows": 1, "errors": 0, "prompt_tokens": 2, "completion_tokens": 3, '
    assert decode(line + '"seconds": 0.1}') == Done("a", 1, 0, 2, 3, 0.1, tuning=None)
    with pytest.raises(ProtocolError, match="missing field"):
        decode(line[:-2].rsplit(",", 1)[0] + ', "seconds": 0.1}')


@pytest.mark.parametrize("msg", EVERY_KIND, ids=lambda m: m.kind)
def test_round_trip(msg: Message) -> None:
    line = encode(msg)
    assert line.endswith("\n") and line.count("\n") == 1  # one line each: the pipes are line-framed
    assert json.loads(line)["kind"] == msg.kind
    assert decode(line) == msg
    assert decode(line.encode()) == msg  # the pool reads bytes, the worker too


def test_setup_carries_the_engine_spec_as_a_spec() -> None:
    back = decode(encode(EVERY_KIND[0]))
    assert isinstance(back, Setup) and back.engine == SPEC and isinstance(back.engine, EngineSpec)


def test_a_whole_number_of_seconds_reads_as_float() -> None:
    msg = decode('{"kind": "loaded", "seconds": 2, "pid": 7}')
    assert msg == Loaded(seconds=2.0, pid=7) and isinstance(msg, Loaded) and isinstance(msg.seconds, float)


def test_exited_is_the_pools_own_and_never_on_a_pipe() -> None:
    with pytest.raises(ProtocolError, match="unknown message kind 'exited'"):
        decode('{"kind": "exited", "code": 1, "error": "x", "log": "l"}')
    assert Exited(code=1, error="x", log="l").kind == "exited"


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('{"kind": "hello", "shard": "a"}', "unknown message kind 'hello' (this version knows 'setup', 'job', "),
        ('{"kind": 3}', "unknown message kind 3"),
        ('{"type": "ready"}', "message without a 'kind' field: '{\"type\": \"ready\"}'"),  # the old protocol
        (
            '{"kind": "done", "shard": "a", "rows": 3}',
            "'done' message: missing field(s) 'errors', 'prompt_tokens', 'completion_tokens', 'seconds'",
        ),
        ('{"kind": "job", "shard": "a", "prompts": "p"}', "'job' message: missing field(s) 'output'"),
        (
            '{"kind": "ready", "shard": "a", "when": 1}',
            "'ready' message: unexpected field(s) 'shard', 'when' (a peer of another version?)",
        ),
        (
            '{"kind": "failed", "error": "e", "extra": 1}',
            "'failed' message: missing field(s) 'shard', 'trace'; unexpected field(s) 'extra'",
        ),
        (
            '{"kind": "loaded", "seconds": "1.0", "pid": 7}',
            "'loaded' message: field 'seconds' should be float, got '1.0'",
        ),
        ('{"kind": "loaded", "seconds": 1.0, "pid": true}', "'loaded' message: field 'pid' should be int, got True"),
        (
            '{"kind": "done", "shard": null, "rows": 1, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0, '
            '"seconds": 0}',
            "'done' message: field 'shard' should be str, got None",
        ),
        (
            '{"kind": "setup", "worker": 0, "engine": {"model_path": "m", "colour": 1}, "sampling": {}, "prefetch": 2}',
            "'setup' message: field 'engine': not an engine spec",
        ),
        ('{"kind": "setup", "worker": 0, "engine": "m", "sampling": {}, "prefetch": 2}', "field 'engine' should be"),
        ("[1, 2]", "not a message object: '[1, 2]'"),
        ("ready", "not a JSON message"),
        (b"\xff\xfe", "not a JSON message"),
    ],
)
def test_what_is_not_a_message_is_refused_by_name(line: str | bytes, error: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        decode(line)
    assert error in str(exc.value), str(exc.value)


# ------------------------------------------------------------------------------------------ the worker


class EchoEngine:
    name = "echo"

    def generate(self, prompts: list[Any], sampling: dict[str, Any]) -> list[Completion]:
        return [Completion(["x"], ["stop"], prompt_tokens=1, completion_tokens=1) for _ in prompts]

    def close(self) -> None:
        pass


class ChunkedReader(worker.LineReader):
    """The worker's reader on a pipe the test writes one chunk to before each read, then closes (EOF)."""

    def __init__(self, chunks: list[str]) -> None:
        read_fd, self.write_fd = os.pipe()
        super().__init__(read_fd)
        self.chunks = list(chunks)

    def read(self, timeout: float | None) -> list[Any]:
        if self.chunks:
            os.write(self.write_fd, self.chunks.pop(0).encode())
        elif self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
        return super().read(timeout)


def serve(chunks: list[str], monkeypatch: pytest.MonkeyPatch) -> list[Message]:
    """What the worker says when the pool sends ``chunks``, one per read, then closes its stdin."""
    from llm_infer_dagster.engines import spec as engine_spec

    monkeypatch.setattr(engine_spec, "load_engine", lambda s: EchoEngine())
    reader, out = ChunkedReader(chunks), io.StringIO()
    try:
        worker.serve(reader, out)
    finally:
        os.close(reader.fd)
        if reader.write_fd >= 0:
            os.close(reader.write_fd)
    return [decode(line) for line in out.getvalue().splitlines()]


SETUP = Setup(worker=0, engine=EngineSpec(model_type="hf", model_path="/m"), sampling={}, prefetch=1)


def a_job(tmp_path: Path) -> Job:
    prompts = tmp_path / "a.parquet"
    pl.DataFrame(
        {"record_id": ["a:0", "a:1"], "prompt": ["p0", "p1"], "is_chat": [False, False], "error": [None, None]},
        schema={"record_id": pl.String, "prompt": pl.String, "is_chat": pl.Boolean, "error": pl.String},
    ).write_parquet(prompts)
    return Job(shard="a", prompts=str(prompts), output=str(tmp_path / "out.parquet"))


def test_a_worker_runs_a_job_and_stops_at_eof(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = a_job(tmp_path)
    said = serve([encode(SETUP), encode(job)], monkeypatch)
    assert [m.kind for m in said] == ["loaded", "ready", "done", "ready"]
    assert isinstance(said[2], Done) and said[2].shard == "a" and said[2].rows == 2
    assert Path(job.output).exists()


@pytest.mark.parametrize(
    ("chunks", "error"),
    [
        (['{"worker": 0, "engine": {}, "sampling": {}, "prefetch": 2}\n'], "message without a 'kind' field"),
        ([encode(Job(shard="a", prompts="p", output="o"))], "the first message to a worker is 'setup', got 'job'"),
        ([encode(SETUP) + encode(Stop())], "'stop' came before the worker asked for anything"),
    ],
)
def test_a_worker_refuses_a_start_of_another_version(
    chunks: list[str], error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    said = serve(chunks, monkeypatch)
    assert len(said) == 1 and isinstance(said[0], Fatal), said
    assert said[0].error.startswith("the pool sent a message this worker cannot read: ") and error in said[0].error


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('{"kind": "job", "shard": "b"}\n', "'job' message: missing field(s) 'prompts', 'output'"),
        (encode(SETUP), "a running worker takes 'job' or 'stop', got 'setup'"),
        (encode(Ready()), "'ready' is a message from a worker, not to one"),
    ],
)
def test_a_running_worker_refuses_a_bad_message_and_stops(
    line: str, error: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = a_job(tmp_path)
    said = serve([encode(SETUP), encode(job), line], monkeypatch)
    assert [m.kind for m in said] == ["loaded", "ready", "done", "ready", "fatal"]
    assert isinstance(said[-1], Fatal) and error in said[-1].error, said[-1]
