"""The OpenAI batch output file: the task's shards as one line per request, in input order.

Written whole, atomically (temp file then rename), at the end of an ``llm-infer`` run of an OpenAI batch task
(``llm-infer run-batch``, or a folder holding only ``requests.jsonl``): one line per request
(``tasks/openai_responses.py``), matched to its request by ``custom_id``. A request whose shard did not finish
gets an error line (status 500) and the command exits non-zero; running it again finishes them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.shards.storage import StorePath

if TYPE_CHECKING:
    from dagster import Definitions

_BAD_REQUEST_PREFIX = "prompt: format_prompt raised BadRequest: "


def write_batch_output(
    defs: Definitions,
    instance: Any,
    task: Any,
    store: Any,
    keys: list[str],
    model: str,
    dest: StorePath,
    input_path: str | None,
    limit: int | None = None,
    failed: Mapping[str, str] | None = None,
) -> tuple[int, int, int]:
    """Write the output file from the shards that are done and current; (lines, error lines, not run).

    A request's result is used only if its shard's completions are materialized and not stale in Dagster and
    the request it was made from is the one in the file now (matched by ``custom_id``). ``failed``: shard key ->
    why it failed in this run, the message of its requests' lines.
    """

    from llm_infer_dagster.orchestration.asset_keys import model_keys
    from llm_infer_dagster.orchestration.staleness import stale_shard_sets
    from llm_infer_dagster.shards.manifest import ShardManifest
    from llm_infer_dagster.shards.storage import atomic_write, mtime
    from llm_infer_dagster.tasks.loader import to_json
    from llm_infer_dagster.tasks.openai_batch import read_requests
    from llm_infer_dagster.tasks.openai_responses import NOT_RUN, embedding_line, error_line, response_line

    name = task.dagster_name
    comp_key, answers_key = model_keys(name)
    done = instance.get_materialized_partitions(comp_key) & set(keys)
    answers = instance.get_materialized_partitions(answers_key) & set(keys)
    stale, _ = stale_shard_sets(defs, instance, name, keys, done, answers)
    made: dict[str, tuple[str, dict[str, Any], int]] = {}
    for key in keys:
        if key not in done or key in stale or not store.has("completions", key) or not store.has("raw", key):
            continue
        created = int(mtime(store.shard_path("completions", key)))
        raw = dict(store.read_frame("raw", key).select("record_id", "data").iter_rows())
        for row in store.read_frame("completions", key).iter_rows(named=True):
            data = raw.get(row["record_id"])
            if data is not None:
                made[str(json.loads(data).get("custom_id"))] = (data, row, created)

    manifest = ShardManifest.load(store)
    failed_at: dict[tuple[str, int], str] = {}
    for key, why in (failed or {}).items():
        shard = manifest.shards.get(key) if manifest is not None else None
        if shard is not None:
            failed_at.update({(shard.file, i): why for i in range(shard.start, shard.stop)})
    lines: list[dict[str, Any]] = []
    errors = not_run = 0
    seen: dict[str, str] = {}
    for path in task.list_files(input_path):
        for index, request in enumerate(read_requests(path)):
            cid = request["custom_id"]
            if cid in seen:
                raise TaskConfigError(f"{path}: custom_id {json.dumps(cid)} is in {seen[cid]} too; make them unique")
            seen[cid] = path
            found = made.get(cid)
            if found is None or found[0] != to_json(request):
                not_run += 1
                if (path, index) in failed_at:
                    why = f"its shard failed: {failed_at[(path, index)]}; fix the cause and run the same command again"
                elif limit is not None:
                    why = f"past --limit {limit}"
                else:
                    why = "its shard did not finish; run the same command again"
                lines.append(error_line(cid, f"not run: {why}", NOT_RUN))
                continue
            _, row, created = found
            if row["error"] is not None:
                errors += 1
                message = str(row["error"])
                if message.startswith(_BAD_REQUEST_PREFIX):
                    message = message[len(_BAD_REQUEST_PREFIX) :].rsplit(" (row ", 1)[0]
                lines.append(error_line(cid, message))
                continue
            if row.get("embedding") is not None:  # a /v1/embeddings request: its vector
                lines.append(embedding_line(request, list(row["embedding"]), int(row["prompt_tokens"] or 0),
                                            model=model, created=created))  # fmt: skip
                continue
            lines.append(
                response_line(
                    request, row["responses"], row["finish_reasons"], int(row["prompt_tokens"] or 0),
                    int(row["completion_tokens"] or 0), model=model, created=created,
                )
            )  # fmt: skip

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")

    atomic_write(dest, write)
    return len(lines), errors, not_run
