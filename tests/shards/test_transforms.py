"""The pure row transforms of one shard: no Dagster, no engine, no files."""

from __future__ import annotations

import json

import polars as pl

from llm_infer_dagster.shards.sharding import Shard
from llm_infer_dagster.shards.tables import (
    ANSWER_SCHEMA,
    PROMPT_SCHEMA,
    RAW_SCHEMA,
    SAMPLED_ANSWER_SCHEMA,
    SCORED_ANSWER_SCHEMA,
)
from llm_infer_dagster.shards.transforms import answers_frame, prompts_frame, raw_frame

SHARD = Shard(key="a_jsonl-0123abcd-00001", file="/d/a.jsonl", file_id="a_jsonl-0123abcd", chunk=1, start=4, stop=7)


def test_raw_frame_ids_are_file_id_and_row_index_and_limit_keeps_the_first_rows():
    rows = [{"q": "x"}, {"q": "y", "n": 2}, {"q": "z"}]
    df = raw_frame(SHARD, rows)
    assert dict(df.schema) == RAW_SCHEMA
    assert df["record_id"].to_list() == ["a_jsonl-0123abcd:4", "a_jsonl-0123abcd:5", "a_jsonl-0123abcd:6"]
    assert df["index"].to_list() == [4, 5, 6]
    assert [json.loads(d) for d in df["data"]] == rows
    assert raw_frame(SHARD, rows, limit=2)["index"].to_list() == [4, 5]
    assert raw_frame(SHARD, []).height == 0


def test_prompts_frame_keeps_each_rows_error_and_marks_chat_prompts():
    raw = raw_frame(SHARD, [{"q": "hi"}, {"nope": 1}, {"q": "chat"}])

    def fmt(row: dict) -> object:
        if row["q"] == "chat":
            return [{"role": "user", "content": "chat"}]
        return f"Q: {row['q']}"

    df = prompts_frame(raw, fmt)
    assert dict(df.schema) == PROMPT_SCHEMA
    assert df["prompt"][0] == "Q: hi" and df["is_chat"].to_list() == [False, False, True]
    assert df["prompt"][1] is None
    assert df["error"][1] == f"format_prompt raised KeyError: 'q' (row 5 of {SHARD.file})"
    assert json.loads(df["prompt"][2]) == [{"role": "user", "content": "chat"}]


def test_answers_frame_separates_no_answer_from_errors():
    comps = pl.DataFrame(
        {"record_id": ["r0", "r1", "r2", "r3"], "response": ["answer is 4", "hm", "boom", None],
         "error": [None, None, None, "prompt too long"]}
    )  # fmt: skip

    def extract(text: str) -> object:
        if text == "boom":
            raise ValueError("cannot parse")
        return int(text.split()[-1]) if "answer is" in text else None

    df = answers_frame(comps, extract)
    assert dict(df.schema) == ANSWER_SCHEMA
    assert df["answer"].to_list() == ["4", None, None, None]
    assert df["error"].to_list() == [None, None, "extract_answer raised ValueError: cannot parse",
                                     "no completion: prompt too long"]  # fmt: skip


def test_answers_frame_without_a_scorer_is_the_seeds_table():
    comps = pl.DataFrame({"record_id": ["r0"], "response": ["answer is 4"], "error": [None]})
    df = answers_frame(comps, lambda text: 4)
    assert dict(df.schema) == ANSWER_SCHEMA and "score" not in df.columns


def test_answers_frame_scores_each_answer_against_its_row_and_a_bad_score_is_that_rows_error():
    import numpy as np

    cases = ("right", "wrong", "none", "raise", "text", "nan", "bool", "numpy", "noanswer", "noresp")
    raw = raw_frame(SHARD, [{"gold": 4, "case": c} for c in cases])
    comps = pl.DataFrame(
        {"record_id": raw["record_id"], "response": ["4", "5", "4", "4", "4", "4", "4", "4", "?", None],
         "error": [None] * 9 + ["prompt too long"]}
    )  # fmt: skip
    seen: list[tuple[object, dict]] = []

    def score(answer: object, org_data: dict) -> object:
        seen.append((answer, org_data))
        case = org_data["case"]
        if case == "raise":
            raise KeyError("label")
        return {"none": None, "text": "yes", "nan": float("nan"), "bool": True, "numpy": np.float32(0.25)}.get(
            case, float(answer == org_data["gold"])
        )

    df = answers_frame(comps, lambda text: int(text) if text.isdigit() else None, score, raw)
    assert dict(df.schema) == SCORED_ANSWER_SCHEMA
    assert df["score"].to_list() == [1.0, 0.0, None, None, None, None, 1.0, 0.25, None, None]
    assert df["answer"].to_list() == ["4", "5", "4", "4", "4", "4", "4", "4", None, None]  # answers are kept
    ids = raw["record_id"].to_list()
    errors = df["error"].to_list()
    assert errors[:3] == [None, None, None] and errors[6:9] == [None, None, None]
    assert errors[3] == f"score raised KeyError: 'label' (record {ids[3]})"
    assert errors[4] == (f"score returned str 'yes', not a number (record {ids[4]}); return an int, float or bool "
                         "(True counts 1), or None for a row that has no score")  # fmt: skip
    assert errors[5].startswith(f"score returned nan, not a finite number (record {ids[5]})")
    assert errors[9] == "no completion: prompt too long"
    # score gets what extract_answer returned and the row read_file returned; rows without an answer are not scored
    assert seen[0] == (4, {"gold": 4, "case": "right"}) and len(seen) == 8


def test_a_scorer_needs_the_raw_rows():
    import pytest

    comps = pl.DataFrame({"record_id": ["r0"], "response": ["4"], "error": [None]})
    with pytest.raises(ValueError, match="raw rows"):
        answers_frame(comps, int, lambda a, r: 1.0)


def test_answers_frame_with_n_samples_scores_every_sample_and_votes_but_keeps_the_first_samples_answer():
    raw = raw_frame(SHARD, [{"gold": 4}, {"gold": 4}, {"gold": 4}, {"gold": None}, {"gold": 4}])
    samples = [
        ["4", "5", "5", "4"],  # 2 correct; "4" and "5" tie 2-2: the earliest, "4", wins
        ["5", "?", "4", "oops"],  # 1 correct; no answer and a raising extract_answer are not correct
        ["?", "?", "?", "?"],  # nothing extracted: 0 correct, no majority
        ["4", "4", "4", "4"],  # the scorer returns None (no gold): the row has no pass@k
        [],  # no completion
    ]
    comps = pl.DataFrame(
        {"record_id": raw["record_id"], "response": [s[0] if s else None for s in samples], "responses": samples,
         "error": [None] * 4 + ["prompt too long"], "sampling_params": ['{"n": 4, "temperature": 0.8}'] * 5}
    )  # fmt: skip

    def extract(text: str) -> object:
        if text == "oops":
            raise ValueError("bad")
        return int(text) if text.isdigit() else None

    def score(answer: object, org_data: dict) -> float | None:
        return None if org_data["gold"] is None else float(answer == org_data["gold"])

    df = answers_frame(comps, extract, score, raw)
    assert dict(df.schema) == SAMPLED_ANSWER_SCHEMA
    assert df["answer"].to_list() == ["4", "5", None, "4", None]  # the first sample's, as with n = 1
    assert df["score"].to_list() == [1.0, 0.0, None, None, None]
    assert df["error"].to_list() == [None, None, None, None, "no completion: prompt too long"]
    assert df["n_samples"].to_list() == [4, 4, 4, 4, 0]
    assert df["n_correct"].to_list() == [2, 1, 0, None, None]
    assert df["majority_answer"].to_list() == ["4", "5", None, "4", None]
    assert df["majority_score"].to_list() == [1.0, 0.0, None, None, None]
    # one sample per row (n = 1): the scored table, as before
    one = comps.with_columns(responses=pl.col("responses").list.head(1), sampling_params=pl.lit('{"n": 1}'))
    assert dict(answers_frame(one, extract, score, raw).schema) == SCORED_ANSWER_SCHEMA
