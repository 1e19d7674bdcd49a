"""``[<task>, report]``: every model side by side, from the shards' files; stale (and refreshed) when answers change.

The fast tests record answers shards themselves (Parquet files and materializations, as the pipeline does) so
that Dagster's real stale-status resolver, the report job and the report sensor can be checked at 3 and at 120
shards; the slow test runs two real models with the HF engine and a scorer the test controls.
"""

from __future__ import annotations

import base64
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl
import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    Definitions,
    RunRequest,
    SkipReason,
    build_sensor_context,
)
from dagster._core.definitions.data_version import StaleStatus
from tests_support import CONFIGS, Settings

from llm_infer_dagster.orchestration.assets.factory import TaskAssets, build_task_assets
from llm_infer_dagster.orchestration.assets.report import (
    ANSWERS_CURSOR,
    answers_keys,
    latest_answers_id,
    report_behind,
    report_key,
)
from llm_infer_dagster.orchestration.dagster_internals.private import DATA_VERSION_TAG
from llm_infer_dagster.orchestration.registry import register_shards, registered_keys
from llm_infer_dagster.orchestration.sensors import build_report_sensor
from llm_infer_dagster.orchestration.staleness import stale_resolver
from llm_infer_dagster.shards.tables import COMPLETION_SCHEMA, SAMPLED_ANSWER_SCHEMA, SCORED_ANSWER_SCHEMA
from llm_infer_dagster.tasks.loader import load_task

TASK = "score_example"


def _setup(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rows: int,
    models: dict | None = None,
    *,
    task_config: str | None = None,
    sampling: str | None = None,
    model_path: str | None = None,
):
    """The example task copied (its ``task_config.py`` / ``sampling_params.json`` replaced when given) over
    ``rows`` questions, with its settings, assets and Definitions on the HF engine on CPU."""
    configs, data, out = tmp_path / "configs", tmp_path / "data", tmp_path / "out"
    shutil.copytree(CONFIGS / TASK, configs / TASK, ignore=shutil.ignore_patterns("data"))
    if models:
        (configs / TASK / "task_settings.json").write_text(json.dumps({"models": models}))
    if task_config is not None:
        (configs / TASK / "task_config.py").write_text(task_config)
    if sampling is not None:
        (configs / TASK / "sampling_params.json").write_text(sampling)
    data.mkdir()
    (data / "q.jsonl").write_text("".join(json.dumps({"question": f"{i}?", "gold": i}) + "\n" for i in range(rows)))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    s = Settings(task_configs=str(configs), input_path=str(data), output_dir=str(out), model_path=model_path,
                 model_type="hf", use_cpu=True)  # fmt: skip
    task = load_task(configs, TASK)
    bundle = build_task_assets(task, s.deployment)
    defs = Definitions(assets=bundle.all_assets, jobs=[bundle.job, bundle.report_job], resources={"settings": s.run})
    return s, task, bundle, defs, str(data)


def _record_answers(instance: DagsterInstance, s: Settings, key: str, version: str, scores: list[float | None]) -> None:
    """One answers shard (and its completions file) on disk and in Dagster, with the data version given."""
    store = s.store(TASK)
    n = len(scores)
    ids = [f"f:{i}" for i in range(n)]
    answers = {"record_id": ids, "answer": ["1"] * n, "error": [None] * n, "score": scores}
    store.write_frame("answers", key, pl.DataFrame(answers, schema=SCORED_ANSWER_SCHEMA))
    completions = {"record_id": ids, "response": ["1"] * n, "responses": [["1"]] * n, "finish_reason": ["stop"] * n,
                   "finish_reasons": [["stop"]] * n, "prompt_tokens": [3] * n, "completion_tokens": [2] * n,
                   "error": [None] * n, "model": ["m"] * n, "sampling_params": ["{}"] * n}  # fmt: skip
    store.write_frame("completions", key, pl.DataFrame(completions, schema=COMPLETION_SCHEMA))
    instance.report_runless_asset_event(
        AssetMaterialization(asset_key=AssetKey([TASK, "completions"]), partition=key, metadata={"seconds": 0.5})
    )
    instance.report_runless_asset_event(
        AssetMaterialization(asset_key=AssetKey([TASK, "answers"]), partition=key, tags={DATA_VERSION_TAG: version})
    )


def _materialize_report(defs: Definitions, bundle: TaskAssets, instance: DagsterInstance):
    result = defs.resolve_job_def(bundle.report_job.name).execute_in_process(instance=instance)
    assert result.success
    return instance.get_latest_materialization_event(report_key(bundle.task)).asset_materialization


@pytest.mark.parametrize("shards", [3, 120])
def test_a_new_answers_shard_makes_the_report_stale_below_100_shards_and_behind_at_any_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shards: int
) -> None:
    s, task, bundle, defs, data = _setup(tmp_path, monkeypatch, rows=shards)
    with DagsterInstance.get() as instance:
        register_shards(instance, task, s.store(TASK), data, shard_size=1)
        keys = registered_keys(instance, task)
        assert len(keys) == shards
        sensor = build_report_sensor(bundle)
        assert not report_behind(instance, task, answers_keys(task))  # nothing answered: nothing to report
        for k in keys:
            _record_answers(instance, s, k, "v1", [1.0, 0.0])
        assert report_behind(instance, task, answers_keys(task))  # answers, no report yet
        assert isinstance(sensor(build_sensor_context(instance=instance)), RunRequest)

        mat = _materialize_report(defs, bundle, instance)
        rec = mat.metadata["models"].value.records[0].data
        got = (rec["model"], rec["shards"], rec["rows"], rec["scored"], rec["mean_score"])
        assert got == ("default", shards, 2 * shards, 2 * shards, 0.5)
        assert rec["ci_method"] == "wilson" and rec["tokens_per_s"] == 8.0  # 2 x 2 tokens per 0.5 s, every shard
        graph = defs.resolve_asset_graph()
        assert stale_resolver(instance, graph).get_status(report_key(task)) == StaleStatus.FRESH
        assert not report_behind(instance, task, answers_keys(task))
        tick = sensor(build_sensor_context(instance=instance))
        assert isinstance(tick, SkipReason) and "up to date" in (tick.skip_message or "")

        _record_answers(instance, s, keys[1], "v2", [1.0, 1.0])  # one shard re-made with a new data version
        resolver = stale_resolver(instance, graph)
        if shards < 100:  # Dagster checks each shard of the parent: the report shows stale, naming the shard
            assert resolver.get_status(report_key(task)) == StaleStatus.STALE
            causes = resolver.get_stale_causes(report_key(task))
            assert [(c.dependency.asset_key, c.dependency.partition_key) for c in causes if c.dependency] == [
                (AssetKey([TASK, "answers"]), keys[1])
            ]
        else:  # Dagster 1.13 skips an edge of >= 100 parent partitions (SKIP_PARTITION_DATA_VERSION_DEPENDENCY_...)
            assert resolver.get_status(report_key(task)) == StaleStatus.FRESH
        assert report_behind(instance, task, answers_keys(task))  # this project's check sees it at any count
        request = sensor(build_sensor_context(instance=instance))
        newest = latest_answers_id(instance, answers_keys(task))
        assert newest > mat.metadata[ANSWERS_CURSOR].value
        assert isinstance(request, RunRequest) and request.run_key == f"answers-{newest}"  # once per answers change

        again = _materialize_report(defs, bundle, instance)
        assert again.metadata["models"].value.records[0].data["mean_score"] == round((shards + 1) / (2 * shards), 4)
        assert stale_resolver(instance, graph).get_status(report_key(task)) == StaleStatus.FRESH
        assert not report_behind(instance, task, answers_keys(task))


def test_the_report_has_a_row_per_model_and_a_chart_even_before_a_model_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, task, bundle, defs, data = _setup(tmp_path, monkeypatch, rows=2, models={"other": {"model_path": str(tmp_path)}})
    assert {str(k.path) for k in bundle.report.dependency_keys} == {str(k.path) for k in answers_keys(task)} == {
        str([TASK, "answers"]), str([TASK, "other", "answers"])}  # fmt: skip
    with DagsterInstance.get() as instance:
        register_shards(instance, task, s.store(TASK), data, shard_size=1)
        for k in registered_keys(instance, task):
            _record_answers(instance, s, k, "v1", [0.25, None])
        mat = _materialize_report(defs, bundle, instance)
    records = [r.data for r in mat.metadata["models"].value.records]
    assert [(r["model"], r["rows"], r["scored"], r["mean_score"], r["ci_method"]) for r in records] == [
        ("default", 4, 2, 0.25, "t"), ("other", 0, 0, None, None)]  # fmt: skip
    assert mat.metadata["report"].value.splitlines()[3].startswith("| other | 0 | 0 |")
    chart = mat.metadata["chart"].value
    assert chart.startswith("![models side by side](data:image/svg+xml;base64,") and chart.endswith(")")
    ET.fromstring(base64.b64decode(chart.split("base64,", 1)[1][:-1]))  # a well-formed SVG
    report_dir = s.store(TASK).task_dir
    assert json.loads((report_dir / "report.json").read_text()) == records
    assert (report_dir / "report.svg").read_text().startswith("<svg")


CONTROLLED = """
import json
import os


def get_file_list(input_path):
    return sorted(os.path.join(input_path, f) for f in os.listdir(input_path))


def read_file(file_path):
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(org_data):
    return "Question: " + org_data["question"]


def extract_answer(model_response):
    return len(model_response)


def score(answer, org_data):
    if org_data["gold"] == 3:
        raise ValueError("no gold for 3")
    return (answer % 7) / 7 + org_data["gold"] / 100
"""


def _expected_score(response: str, gold: int) -> float | None:
    return None if gold == 3 else (len(response) % 7) / 7 + gold / 100


@pytest.mark.slow
def test_two_real_models_are_scored_per_row_and_reported_side_by_side(
    tmp_path: Path, tiny_model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_infer_dagster.testing.tiny_model import build_tiny_model

    other = build_tiny_model(tmp_path / "other-model", arch="qwen2", seed=1)
    models = {"qwen": {"model_path": str(other)}}
    s, task, bundle, defs, data = _setup(
        tmp_path, monkeypatch, rows=6, models=models, task_config=CONTROLLED, model_path=tiny_model_path
    )
    store = s.store(TASK)
    with DagsterInstance.get() as instance:
        register_shards(instance, task, store, data, shard_size=4)
        keys = registered_keys(instance, task)
        assert len(keys) == 2
        result = defs.resolve_job_def(bundle.job.name).execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        )
        assert result.success
        expected: dict[str, list[float]] = {}
        for model in (None, "qwen"):
            name = model or "default"
            for k in keys:
                comps = store.read_frame("completions", k, model)
                answers = store.read_frame("answers", k, model)
                raw = store.read_frame("raw", k)
                assert dict(answers.schema) == SCORED_ANSWER_SCHEMA
                golds = [json.loads(d)["gold"] for d in raw["data"]]
                want = [_expected_score(r, g) for r, g in zip(comps["response"], golds, strict=True)]
                assert answers["score"].to_list() == pytest.approx(want)
                for rid, g, err in zip(answers["record_id"], golds, answers["error"], strict=True):
                    assert err == (f"score raised ValueError: no gold for 3 (record {rid})" if g == 3 else None)
                assert answers["answer"].null_count() == 0  # a failed score keeps its answer
                got = [v for v in want if v is not None]
                expected.setdefault(name, []).extend(got)
                md = next(
                    r.asset_materialization.metadata
                    for r in instance.fetch_materializations(bundle.model_key("answers", model), limit=10).records
                    if r.asset_materialization and r.asset_materialization.partition == k
                )
                assert md["scored"].value == len(got)
                assert md["mean_score"].value == pytest.approx(sum(got) / len(got), abs=1e-6)
        assert expected["default"] != expected["qwen"]  # two models, two sets of responses
        seed = [r for k in keys for r in json.loads(store.result_path("extract", k).read_text())]
        assert [r["score"] for r in seed if r["score"] is not None] == pytest.approx(expected["default"])

        assert report_behind(instance, task, answers_keys(task))
        mat = _materialize_report(defs, bundle, instance)
    records = {r.data["model"]: r.data for r in mat.metadata["models"].value.records}
    assert list(records) == ["default", "qwen"]
    for name, scores in expected.items():
        r = records[name]
        model = None if name == "default" else name
        comps = pl.concat([store.read_frame("completions", k, model) for k in keys])
        assert (r["shards"], r["rows"], r["errors"], r["scored"]) == (2, 6, 1, 5)
        assert r["mean_score"] == pytest.approx(sum(scores) / len(scores), abs=1e-4)
        assert r["ci_method"] == "t" and r["ci_low"] < r["mean_score"] < r["ci_high"]
        assert r["prompt_tokens"] == comps["prompt_tokens"].sum()
        assert r["completion_tokens"] == comps["completion_tokens"].sum() and r["tokens_per_s"] > 0
    svg = base64.b64decode(mat.metadata["chart"].value.split("base64,", 1)[1][:-1]).decode()
    texts = [t.text for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]
    assert "mean score (95% CI)" in texts and texts.count("qwen") == 2
    assert "| qwen | 2 | 6 | 1 |" in mat.metadata["report"].value


@pytest.mark.slow
def test_llm_infer_makes_the_report_when_answers_changed(tmp_path: Path, tiny_model_path: str) -> None:
    from tests_support import instance_at, llm_infer

    out = tmp_path / "out"
    args = ["--task_name", TASK, "--config_path", str(CONFIGS), "--output_path", str(out), "--model_path",
            tiny_model_path, "--model_type", "hf", "--use_cpu", "--limit", "2", "--shard_size", "4"]  # fmt: skip
    first = llm_infer(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"report: default 0.0% of 6 rows extracted ({out / TASK / 'report.md'})" in first.stderr
    assert first.stdout.strip().splitlines()[-1].startswith("3/3 shards done")  # the last line is as it was
    with instance_at(out) as instance:
        assert len(instance.fetch_materializations(AssetKey([TASK, "report"]), limit=10).records) == 1
    assert json.loads((out / TASK / "report.json").read_text())[0]["rows"] == 6
    again = llm_infer(*args)  # nothing changed: no run, no new report
    assert again.returncode == 0 and "report:" not in again.stderr
    extract = llm_infer(*args, "--extract_only")  # new answers: a new report
    assert extract.returncode == 0 and "report: default" in extract.stderr
    with instance_at(out) as instance:
        assert len(instance.fetch_materializations(AssetKey([TASK, "report"]), limit=10).records) == 2


SAMPLED = CONTROLLED.replace(
    "def extract_answer(model_response):\n    return len(model_response)",
    "def extract_answer(model_response):\n    return len(model_response) % 3",
).replace(
    'def score(answer, org_data):\n    if org_data["gold"] == 3:\n        raise ValueError("no gold for 3")\n'
    '    return (answer % 7) / 7 + org_data["gold"] / 100',
    'def score(answer, org_data):\n    return float(answer == org_data["gold"] % 3)',
)


@pytest.mark.slow
def test_n_samples_give_pass_at_1_pass_at_n_and_maj_at_n_in_the_answers_and_the_report(
    tmp_path: Path, tiny_model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import math

    from llm_infer_dagster.orchestration.assets.report import report_line

    assert SAMPLED != CONTROLLED and "% 3" in SAMPLED
    sampling = '{"n": 4, "temperature": 1.0, "max_tokens": 6}'
    s, task, bundle, defs, data = _setup(  # the answer: a sample's length mod 3
        tmp_path, monkeypatch, rows=6, task_config=SAMPLED, sampling=sampling, model_path=tiny_model_path
    )
    store = s.store(TASK)
    with DagsterInstance.get() as instance:
        register_shards(instance, task, store, data, shard_size=3)
        keys = registered_keys(instance, task)
        result = defs.resolve_job_def(bundle.job.name).execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        )
        assert result.success
        per_row: list[tuple[int, int, bool]] = []  # (n, c, majority correct), recomputed from the samples
        for k in keys:
            comps, answers = store.read_frame("completions", k), store.read_frame("answers", k)
            golds = [json.loads(d)["gold"] for d in store.read_frame("raw", k)["data"]]
            assert dict(answers.schema) == SAMPLED_ANSWER_SCHEMA
            assert answers["answer"].to_list() == [json.dumps(len(r) % 3) for r in comps["response"]]  # 1st sample
            for samples, gold, row in zip(comps["responses"], golds, answers.iter_rows(named=True), strict=True):
                votes = [len(t) % 3 for t in samples]
                correct = [v == gold % 3 for v in votes]
                winner = max(votes, key=lambda v: (votes.count(v), -votes.index(v)))
                assert (row["n_samples"], row["n_correct"]) == (4, sum(correct))
                assert row["majority_answer"] == json.dumps(winner)
                per_row.append((4, sum(correct), winner == gold % 3))
            md = next(
                r.asset_materialization.metadata
                for r in instance.fetch_materializations(bundle.model_key("answers", None), limit=10).records
                if r.asset_materialization and r.asset_materialization.partition == k
            )
            shard = per_row[-3:]  # each answers shard reports its own pass@k and maj@n
            assert md["pass@1"].value == pytest.approx(sum(c / n for n, c, _m in shard) / 3, abs=1e-6)
            assert md["maj@4"].value == pytest.approx(sum(m for _n, _c, m in shard) / 3, abs=1e-6)
        seed = [r for k in keys for r in json.loads(store.result_path("extract", k).read_text())]
        assert [(r["n_samples"], r["n_correct"]) for r in seed] == [(n, c) for n, c, _m in per_row]  # seed layout
        mat = _materialize_report(defs, bundle, instance)
        line = report_line(instance, task)
    pass1 = sum(c / n for n, c, _m in per_row) / 6
    pass4 = sum(1 - math.comb(n - c, 4) / math.comb(n, 4) for n, c, _m in per_row) / 6
    maj4 = sum(m for _n, _c, m in per_row) / 6
    rec = mat.metadata["models"].value.records[0].data
    assert (rec["pass@1"], rec["pass@4"], rec["maj@4"], rec["sampled_rows"], rec["rows@4"]) == (
        round(pass1, 4), round(pass4, 4), round(maj4, 4), 6, 6)  # fmt: skip
    assert rec["scored"] == 6 and rec["mean_score"] is not None  # the first sample's mean score, beside them
    assert mat.metadata["pass@4/default"].value == pytest.approx(pass4, abs=1e-6)
    assert mat.metadata["maj@4/default"].value == pytest.approx(maj4, abs=1e-6)
    names = [c.name for c in mat.metadata["models"].value.schema.columns]
    assert names.index("ci_method") < names.index("pass@1") < names.index("pass@4") < names.index("maj@4")
    assert "| pass@1 | pass@4 | maj@4 |" in mat.metadata["report"].value
    assert f"pass@1 {pass1:.4f}, pass@4 {pass4:.4f}, maj@4 {maj4:.4f}" in line
