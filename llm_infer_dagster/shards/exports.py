"""The seed's output layout (``results/infer``, ``results/extract``, ``results/text``), built from the shards.

Existing downstream scripts read these JSON arrays; the Parquet shards stay the source of truth. The files
are strict JSON: NaN and infinities (an answer ``float("nan")``, a row read from a CSV with gaps) are
written as null, since ``NaN`` is not JSON and strict parsers (``jq``, JavaScript, Go) refuse the file.
"""

from __future__ import annotations

import json
import math
from typing import Any

import polars as pl

from llm_infer_dagster.shards.pooled import pooled_values
from llm_infer_dagster.shards.store import TaskStore, atomic_write_text
from llm_infer_dagster.shards.tables import SAMPLED_COLUMNS


def seed_records(
    raw: pl.DataFrame, prompts: pl.DataFrame, completions: pl.DataFrame, answers: pl.DataFrame | None
) -> list[dict[str, Any]]:
    """One dict per row with the seed's keys plus record_id, every sample, finish_reason and the row's error.

    The seed's keys: file_name, file_idx, origin_data, prompt, model_response (always a string, stripped as
    the seed stripped it; ``""`` for a row that failed, its reason in ``error``) and, once answers exist,
    extracted_answer (inference-only records have no such key, as the seed's had none), and ``score`` for a
    task that defines one (with n > 1 samples also ``n_samples``, ``n_correct``, ``majority_answer`` and
    ``majority_score``). ``model_response_raw`` is the first sample's exact text, unstripped (a code
    completion's leading indentation, a trailing newline), ``""`` for a failed row. A pooling task's record
    also has ``pooled``: the value its extract_answer got (the embedding, ``{label: probability}``, the reward).
    """
    df = raw.join(prompts.rename({"error": "prompt_error"}), on="record_id", how="left").join(
        completions.select("record_id", "response", "responses", "finish_reason", "error"),
        on="record_id",
        how="left",
    )
    scored = answers is not None and "score" in answers.columns  # a task with score(answer, org_data)
    sampled = [c for c in SAMPLED_COLUMNS if answers is not None and c in answers.columns]  # n > 1: pass@k's
    if answers is not None:
        df = df.join(
            answers.select(
                "record_id", "answer", pl.col("error").alias("answer_error"), *(["score"] if scored else []), *sampled
            ),
            on="record_id",
            how="left",
        )
    by_id = (
        dict(zip(completions["record_id"].to_list(), pooled, strict=True))
        if (pooled := pooled_values(completions)) is not None
        else None
    )
    out = []
    for r in df.iter_rows(named=True):
        prompt = json.loads(r["prompt"]) if r.get("is_chat") else r.get("prompt")
        record = {
            "record_id": r["record_id"],
            "file_name": r["file"],
            "file_idx": r["index"],
            "origin_data": json.loads(r["data"]),
            "prompt": prompt,
            "model_response": (r["response"] or "").strip(),
            "model_response_raw": r["response"] or "",
            "responses": r["responses"],
            "finish_reason": r["finish_reason"],
            "error": r.get("answer_error") or r["error"] or r.get("prompt_error"),
        }
        if by_id is not None:
            record["pooled"] = by_id.get(r["record_id"])
        if answers is not None:
            answer = r.get("answer")
            record["extracted_answer"] = json.loads(answer) if answer is not None else None
            if scored:
                record["score"] = r["score"]
            for c in sampled:
                value = r[c]
                record[c] = json.loads(value) if c == "majority_answer" and value is not None else value
        out.append(record)
    return out


def strict_json_value(value: Any) -> Any:
    """``value`` with every NaN / inf float replaced by None, so it encodes as strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json_value(v) for v in value]
    return value


def strict_json_text(obj: Any) -> str:
    """Strict JSON (no NaN / Infinity tokens) in the layout of the seed's result files."""
    return json.dumps(strict_json_value(obj), ensure_ascii=False, indent=2, allow_nan=False, default=str)


def records_text(records: list[dict[str, Any]]) -> str:
    parts = []
    for r in records:
        prompt = r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"], ensure_ascii=False)
        parts.append(
            f"===== {r['record_id']} =====\n[prompt]\n{prompt}\n[response]\n{r['model_response']}\n"
            f"[extracted_answer] {json.dumps(r.get('extracted_answer'), ensure_ascii=False)}\n"
            + (f"[error] {r['error']}\n" if r["error"] else "")
        )
    return "\n".join(parts)


def export_shard(
    store: TaskStore,
    key: str,
    *,
    with_answers: bool,
    save_text: bool,
    completions: pl.DataFrame | None = None,
    answers: pl.DataFrame | None = None,
    raw: pl.DataFrame | None = None,
    prompts: pl.DataFrame | None = None,
) -> None:
    """Write results/infer/<key>.json, or results/extract/<key>.json once answers exist (and text).

    ``completions`` / ``answers`` / ``raw`` / ``prompts``: the shard's frames when the caller holds them
    already (not read again).
    """
    raw = raw if raw is not None else store.read_frame("raw", key)
    prompts = prompts if prompts is not None else store.read_frame("prompts", key)
    comps = completions if completions is not None else store.read_frame("completions", key)
    if with_answers and answers is None:
        answers = store.read_frame("answers", key)
    records = seed_records(raw, prompts, comps, answers if with_answers else None)
    atomic_write_text(store.result_path("extract" if with_answers else "infer", key), strict_json_text(records))
    if save_text and with_answers:
        atomic_write_text(store.result_path("text", key), records_text(records))
