"""Pure row transforms of one shard: input rows -> raw frame -> prompts frame; completions -> answers frame.

No Dagster, no engine, no files: each takes a frame (or rows) and the task's function and returns a frame,
so the streaming step in ``orchestration/assets/pipeline.py`` only calls these, writes the result and reports it. A row
whose user function raises, or returns what cannot be used (an empty prompt, an answer JSON cannot encode),
keeps its error in the ``error`` column; it never fails the shard. The same holds for the optional
``score(answer, org_data)``: one that raises, or returns what is not a finite number (nor None), is that row's
``error`` (naming the record), with its answer kept and its score null.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.shards.metrics import CORRECT_AT, majority_vote
from llm_infer_dagster.shards.pooled import pooled_values
from llm_infer_dagster.shards.sharding import Shard
from llm_infer_dagster.shards.tables import (
    ANSWER_SCHEMA,
    PROMPT_ROW_SAMPLING_SCHEMA,
    PROMPT_SCHEMA,
    RAW_SCHEMA,
    ROW_SAMPLING_COLUMN,
    SAMPLED_ANSWER_SCHEMA,
    SCORED_ANSWER_SCHEMA,
)
from llm_infer_dagster.tasks.images import ImageError, localize
from llm_infer_dagster.tasks.loader import JSON_HINT, RowPrompt, RowSamplingError, json_problem, to_json


def raw_frame(shard: Shard, rows: Sequence[dict[str, Any]], limit: int | None = None) -> pl.DataFrame:
    """The shard's rows (``rows`` is the slice ``[shard.start, shard.stop)`` of the file), with stable ids."""
    chunk = list(rows[:limit] if limit is not None else rows)
    return pl.DataFrame(
        {
            "record_id": [f"{shard.file_id}:{shard.start + i}" for i in range(len(chunk))],
            "file": [shard.file] * len(chunk),
            "index": [shard.start + i for i in range(len(chunk))],
            "data": [to_json(r) for r in chunk],
        },
        schema=RAW_SCHEMA,
    )


def prompts_frame(raw: pl.DataFrame, format_prompt: Callable[[dict[str, Any]], Any]) -> pl.DataFrame:
    """``format_prompt`` per row: a string, or chat messages stored as JSON with ``is_chat``.

    A :class:`RowPrompt` (format_prompt returned a dict) gives its prompt, and its sampling overrides go to
    the ``sampling_params`` column, which only a shard with such a row has. Invalid overrides raise
    :class:`TaskConfigError` naming the row: the task's code is wrong, so the shard fails, not the row.
    """
    texts: list[str | None] = []
    is_chat: list[bool] = []
    errors: list[str | None] = []
    overrides: list[str | None] = []
    for row in raw.iter_rows(named=True):
        where = f"row {row['index']} of {row['file']}"
        overrides.append(None)
        try:
            p = format_prompt(json.loads(row["data"]))
        except RowSamplingError as exc:
            raise TaskConfigError(f"{exc} ({where}); fix the sampling_params format_prompt returns") from None
        except Exception as exc:
            texts.append(None)
            is_chat.append(False)
            errors.append(f"format_prompt raised {type(exc).__name__}: {exc} ({where})")
            continue
        if isinstance(p, RowPrompt):
            if p.sampling_params is not None:
                overrides[-1] = json.dumps(p.sampling_params, sort_keys=True, ensure_ascii=False)
            p = p.prompt
        empty = _empty_prompt(p)
        if empty is not None:
            texts.append(None)
            is_chat.append(False)  # like any prompt error: no prompt, nothing to parse as messages
            errors.append(f"format_prompt returned {empty} ({where}); return the text or messages to send the model")
            continue
        try:  # each image checked (read, decoded) now, and named by its absolute path for the engine
            p = localize(p, Path(row["file"]).resolve().parent)
        except ImageError as exc:
            texts.append(None)
            is_chat.append(False)
            errors.append(f"{exc} ({where})")
            continue
        texts.append(p if isinstance(p, str) else json.dumps(p, ensure_ascii=False))
        is_chat.append(not isinstance(p, str))
        errors.append(None)
    columns: dict[str, Any] = {"record_id": raw["record_id"], "prompt": texts, "is_chat": is_chat, "error": errors}
    if any(o is not None for o in overrides):
        return pl.DataFrame({**columns, ROW_SAMPLING_COLUMN: overrides}, schema=PROMPT_ROW_SAMPLING_SCHEMA)
    return pl.DataFrame(columns, schema=PROMPT_SCHEMA)


def _empty_prompt(prompt: Any) -> str | None:
    """Why ``prompt`` has nothing to send, or None. Engines would generate from BOS alone: junk, not an answer."""
    if isinstance(prompt, str):
        return None if prompt.strip() else f"an empty prompt ({prompt!r})"
    if isinstance(prompt, list | tuple) and not prompt:
        return "an empty message list"
    return None


#: How to fix a score that is not a number; ends the row errors that report one.
SCORE_HINT = "return an int, float or bool (True counts 1), or None for a row that has no score"


def answers_frame(
    completions: pl.DataFrame,
    extract_answer: Callable[[str], Any],
    score: Callable[[Any, dict[str, Any]], Any] | None = None,
    raw: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """``extract_answer`` on each row's first sample; rows without a completion keep why.

    ``score`` (the task's optional scorer) is called as ``score(answer, org_data)`` on each row with an answer
    (not None), ``answer`` being what extract_answer returned and ``org_data`` the row read_file returned (from
    ``raw``, the shard's raw frame, which it then needs); the frame then has a ``score`` column. Without a
    scorer it is the seed's answers table, as before.

    A scored shard sampled more than once per row (some row's ``sampling_params`` has ``n`` > 1) also extracts
    and scores every other sample, for pass@k and maj@n (:data:`SAMPLED_ANSWER_SCHEMA`, ``shards/metrics.py``);
    ``answer``, ``score`` and ``error`` stay the first sample's.

    A pooling task's ``extract_answer`` gets the row's pooled value instead of text (``shards/pooled.py``):
    the embedding as a list of floats, the ``{label: probability}`` dict, or the reward as a float.
    """
    values: list[str | None] = []
    errors: list[str | None] = []
    scores: list[float | None] = []
    rows: Mapping[str, str] = {}
    if score is not None:
        if raw is None:
            raise ValueError("answers_frame: a score function needs the shard's raw rows (raw=)")
        rows = dict(zip(raw["record_id"].to_list(), raw["data"].to_list(), strict=True))
    pooled = pooled_values(completions)  # a pooling task: extract_answer gets the vector / probabilities / score
    sampled = score is not None and pooled is None and _sampled(completions)
    per_sample: dict[str, list[Any]] = {"n_samples": [], "n_correct": [], "majority_answer": [], "majority_score": []}
    columns_in = ["record_id", "response", "error", *(["responses"] if sampled else [])]
    for i, row in enumerate(completions.select(columns_in).iter_rows(named=True)):
        given = row["response"] if pooled is None else pooled[i]
        answer, ans, error = _extract(extract_answer, given, row["record_id"], row["error"])
        values.append(answer)
        errors.append(error)
        scores.append(None)
        declined = False
        if score is not None and answer is not None:
            scores[-1], errors[-1] = _score(score, ans, row["record_id"], rows)
            declined = scores[-1] is None and errors[-1] is None
        if sampled:
            samples = (row["responses"] or []) if row["error"] is None else []
            answers, sample_scores = [answer], [scores[-1]]
            for text in samples[1:]:
                other, other_ans, _why = _extract(extract_answer, text, row["record_id"], None)
                value: float | None = None
                if other is not None:
                    value, why = _score(score, other_ans, row["record_id"], rows)  # type: ignore[arg-type]
                    declined = declined or (value is None and why is None)
                answers.append(other)
                sample_scores.append(value)
            counted = bool(samples) and not declined  # the scorer's None: this row has no score
            winner = majority_vote(answers) if samples else None
            per_sample["n_samples"].append(len(samples))
            per_sample["n_correct"].append(
                sum(v is not None and v >= CORRECT_AT for v in sample_scores) if counted else None
            )
            per_sample["majority_answer"].append(answers[winner] if winner is not None else None)
            per_sample["majority_score"].append(sample_scores[winner] if winner is not None else None)
    columns: dict[str, Any] = {"record_id": completions["record_id"], "answer": values, "error": errors}
    if score is None:  # the seed's table, as it was
        return pl.DataFrame(columns, schema=ANSWER_SCHEMA)
    if sampled:
        return pl.DataFrame({**columns, "score": scores, **per_sample}, schema=SAMPLED_ANSWER_SCHEMA)
    return pl.DataFrame({**columns, "score": scores}, schema=SCORED_ANSWER_SCHEMA)


def _sampled(completions: pl.DataFrame) -> bool:
    """Whether some row of the shard asked for more than one sample (its effective ``sampling_params``)."""
    if "responses" not in completions.columns:
        return False
    if "sampling_params" not in completions.columns:
        return bool((completions["responses"].list.len().max() or 0) > 1)  # type: ignore[operator]
    return any(int(json.loads(p or "{}").get("n", 1)) > 1 for p in completions["sampling_params"].unique())


def _extract(
    extract_answer: Callable[[str], Any], text: Any, record_id: str, failed: str | None
) -> tuple[str | None, Any, str | None]:
    """(the answer as JSON, the answer, None) or (None, None, why there is none; None when extract_answer
    found nothing) of one sample; ``failed`` is the completion's error."""
    if failed is not None:
        return None, None, f"no completion: {failed}"
    try:
        ans = extract_answer(text)
    except Exception as exc:
        return None, None, f"extract_answer raised {type(exc).__name__}: {exc}"
    if ans is None:
        return None, None, None
    try:
        return to_json(ans), ans, None
    except Exception:
        return (
            None,
            None,
            (
                f"extract_answer returned a value JSON cannot encode: {json_problem(ans, 'answer')} "
                f"(record {record_id}); {JSON_HINT}"
            ),
        )


def _score(
    score: Callable[[Any, dict[str, Any]], Any], answer: Any, record_id: str, rows: Mapping[str, str]
) -> tuple[float | None, str | None]:
    """(the row's score, None) or (None, why it has none): one row's ``score(answer, org_data)``."""
    data = rows.get(record_id)
    if data is None:
        return None, f"score: record {record_id} is not in the shard's raw rows; materialize raw for the shard again"
    try:
        value = score(answer, json.loads(data))
    except Exception as exc:
        return None, f"score raised {type(exc).__name__}: {exc} (record {record_id})"
    if value is None:
        return None, None
    if not isinstance(value, numbers.Real):  # int, float, bool, numpy's and Fraction; not str, Decimal, complex
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return None, f"score returned {type(value).__name__} {shown}, not a number (record {record_id}); {SCORE_HINT}"
    number = float(value)
    if not math.isfinite(number):
        return None, f"score returned {number}, not a finite number (record {record_id}); {SCORE_HINT}"
    return number, None
