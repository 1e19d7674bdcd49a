"""The four assets of a task on a real Dagster instance (sqlite under a real DAGSTER_HOME), real Parquet,
the real HF engine on the tiny model."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import polars as pl
import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    DagsterInstance,
    Definitions,
    define_asset_job,
    materialize,
)
from tests_support import Settings

from llm_infer_dagster.engines.spec import has_chat_template
from llm_infer_dagster.orchestration.assets.factory import build_task_assets, code_versions
from llm_infer_dagster.orchestration.registry import register_shards, registered_keys
from llm_infer_dagster.tasks.loader import load_task

REPO = Path(__file__).resolve().parents[2]

TASK = textwrap.dedent(
    """
    import json, os

    def get_file_list(input_path):
        return sorted(os.path.join(input_path, f) for f in os.listdir(input_path))

    def read_file(file_path):
        with open(file_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def format_prompt(org_data):
        if org_data.get("bad"):
            raise KeyError("no question here")
        if org_data.get("chat"):
            return [{"role": "user", "content": org_data["q"]}]
        return org_data["q"]

    def extract_answer(model_response):
        if "EXPLODE" in model_response:
            raise ValueError("cannot parse")
        return {"length": len(model_response)} if model_response.startswith("A") else None
    """
)


@pytest.fixture()
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DagsterInstance:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.get() as inst:
        yield inst


@pytest.fixture()
def task_setup(tmp_path: Path) -> tuple[Path, Path]:
    configs = tmp_path / "configs"
    (configs / "demo").mkdir(parents=True)
    (configs / "demo" / "task_config.py").write_text(TASK)
    (configs / "demo" / "sampling_params.json").write_text(json.dumps({"temperature": 0, "max_tokens": 6}))
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"q": f"question number {i}?"} for i in range(7)]
    rows[2] = {"bad": True}
    rows[3] = {"q": "hi", "chat": True}
    rows[5] = {"q": "word " * 200}  # longer than max_model_len below
    (data / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (data / "b.jsonl").write_text("\n".join(json.dumps({"q": f"b {i}"}) for i in range(3)))
    return configs, data


def _settings(configs: Path, data: Path, out: Path, model: str, **kw: object) -> Settings:
    return Settings(
        task_configs=str(configs),
        input_path=str(data),
        output_dir=str(out),
        model_path=model,
        model_type="hf",
        use_cpu=True,
        max_model_len=64,
        **kw,
    )


@pytest.mark.slow
def test_four_assets_over_a_range_load_the_model_once(instance, task_setup, tmp_path, tiny_model_path):
    configs, data = task_setup
    task = load_task(configs, "demo")
    settings = _settings(configs, data, tmp_path / "out", tiny_model_path)
    bundle = build_task_assets(task, settings.deployment)
    store = settings.store("demo")
    reg = register_shards(instance, task, store, str(data), shard_size=4)
    keys = registered_keys(instance, task)
    assert keys == list(reg.manifest.shards) and len(keys) == 3  # a: 4+3 rows, b: 3 rows

    defs = Definitions(assets=bundle.all_assets, jobs=[bundle.job], resources={"settings": settings.run})
    result = defs.resolve_job_def("demo_job").execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
    )
    assert result.success
    for name in ("raw", "prompts", "completions", "answers"):
        assert instance.get_materialized_partitions(AssetKey(["demo", name])) == set(keys)

    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert sum("model loaded" in m for m in logs) == 1, "one engine load for the whole range"

    first = keys[0]
    raw = store.read_frame("raw", first)
    assert raw.columns[:4] == ["record_id", "file", "index", "data"]
    assert raw["index"].to_list() == [0, 1, 2, 3]
    prompts = store.read_frame("prompts", first)
    assert prompts["error"][2].startswith("format_prompt raised KeyError") and "row 2" in prompts["error"][2]
    assert prompts["is_chat"].to_list() == [False, False, False, True]
    comps = pl.concat([store.read_frame("completions", k) for k in keys])
    assert comps.height == 10
    for col in (
        "response",
        "responses",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "model",
        "sampling_params",
    ):
        assert col in comps.columns
    by_id = {r["record_id"]: r for r in comps.iter_rows(named=True)}
    a_id = reg.manifest.shards[first].file_id
    assert by_id[f"{a_id}:2"]["error"].startswith("prompt: format_prompt raised KeyError")
    assert "max_model_len" in by_id[f"{a_id}:5"]["error"]  # too long: an error row, not a dropped row
    ok = comps.filter(pl.col("error").is_null())
    assert ok.height == 8
    assert (ok["completion_tokens"] >= 1).all() and (ok["completion_tokens"] <= 6).all()
    assert json.loads(ok["sampling_params"][0])["max_tokens"] == 6
    answers = store.read_frame("answers", first)
    assert answers.columns == ["record_id", "answer", "error"]
    assert answers["error"][2].startswith("no completion: prompt: format_prompt raised")

    # Dagster metadata a person would look for, per shard.
    mat = instance.get_latest_materialization_event(AssetKey(["demo", "completions"]))
    md = mat.asset_materialization.metadata
    for k in ("rows", "errors", "prompt_tokens", "completion_tokens", "tokens_per_s", "rows_per_s", "worker", "gpus",
              "preview"):  # fmt: skip
        assert k in md
    # ... and the step's pace so far (pipeline/throughput.py): the last shard to land saw every row done.
    assert md["run_rows_done"].value == md["run_rows_total"].value == 10 and md["run_eta_s"].value == 0
    assert md["run_rows_per_s"].value > 0 and md["run_tokens_per_s"].value > 0 and md["run_cpu_hours"].value > 0
    assert md["run_cpu_hours_projected"].value >= md["run_cpu_hours"].value and "run_gpu_hours" not in md
    # Each shard is recorded once, as it lands, with the provenance Dagster's stale status reads, so a shard
    # kept from a killed run still goes stale when the model or prompt changes.
    comp_events = instance.fetch_materializations(AssetKey(["demo", "completions"]), limit=100).records
    assert len(comp_events) == len(keys)
    code_version = bundle.assets[0].code_versions_by_key[AssetKey(["demo", "completions"])]
    by_partition: dict[str, set[tuple[str, str]]] = {}
    for rec in comp_events:
        tags = rec.asset_materialization.tags or {}
        assert tags.get("dagster/code_version") == code_version
        assert tags.get("dagster/input_data_version/demo/prompts")
        by_partition.setdefault(rec.partition_key, set()).add(
            (tags["dagster/data_version"], tags["dagster/code_version"])
        )
    assert sorted(by_partition) == sorted(keys)
    ans_md = instance.get_latest_materialization_event(AssetKey(["demo", "answers"])).asset_materialization.metadata
    assert {"rows", "extracted", "errors", "extraction_rate", "preview"} <= set(ans_md)

    # The seed's layout.
    extract = json.loads(store.result_path("extract", first).read_text())
    assert [r["file_idx"] for r in extract] == [0, 1, 2, 3]
    assert set(extract[0]) >= {"file_name", "file_idx", "origin_data", "prompt", "model_response", "extracted_answer"}
    assert extract[3]["prompt"] == [{"role": "user", "content": "hi"}]
    assert store.result_path("infer", first).is_file()


def _checks_by_partition(instance: DagsterInstance, asset: AssetKey, name: str) -> dict[str, object]:
    """partition -> the latest execution record of check ``name`` on ``asset`` (records come newest first)."""
    records = instance.event_log_storage.get_asset_check_execution_history(AssetCheckKey(asset, name), limit=100)
    latest: dict[str, object] = {}
    for rec in records:
        latest.setdefault(rec.partition, rec)
    return latest


def _evaluation(rec):
    return rec.event.dagster_event.event_specific_data


@pytest.mark.slow
def test_quality_checks_are_recorded_per_shard_and_a_blocking_error_keeps_answers_back(
    instance, task_setup, tmp_path, tiny_model_path
):
    configs, data = task_setup
    # Every completion runs to max_tokens: cut_at_max_tokens fails with ERROR on every shard (not blocking).
    (configs / "demo" / "sampling_params.json").write_text(
        json.dumps({"temperature": 0, "max_tokens": 2, "ignore_eos": True})
    )
    # error_rows per shard (see task_setup): a[0:4] 1 of 4 (a prompt error) -> WARN, a[4:7] 1 of 3 (too long)
    # -> ERROR, blocking: no answers; b 0 of 3 -> passed.
    (configs / "demo" / "task_settings.json").write_text(
        json.dumps({"checks": {"error_rows": {"warn": 0.1, "error": 0.3, "blocking": True}}})
    )
    task = load_task(configs, "demo")
    settings = _settings(configs, data, tmp_path / "out", tiny_model_path)
    bundle = build_task_assets(task, settings.deployment)
    store = settings.store("demo")
    register_shards(instance, task, store, str(data), shard_size=4)
    warned, blocked, clean = keys = registered_keys(instance, task)
    defs = Definitions(assets=bundle.all_assets, jobs=[bundle.job], resources={"settings": settings.run})
    result = defs.resolve_job_def("demo_job").execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        raise_on_error=False,
    )
    assert not result.success
    comp_key, answers_key = AssetKey(["demo", "completions"]), AssetKey(["demo", "answers"])
    assert instance.get_materialized_partitions(comp_key) == set(keys)
    assert instance.get_materialized_partitions(answers_key) == {warned, clean}  # the blocked shard stops here
    assert not store.has("answers", blocked) and not store.result_path("extract", blocked).exists()

    # The step's failure (what llm-infer's last line reads) names the shard and the check.
    failure = next(e.step_failure_data for e in result.all_events if e.is_step_failure)
    failed = json.loads(failure.user_failure_data.metadata["failed_shards"].value)
    assert list(failed) == [blocked]
    assert failed[blocked].startswith("blocking check error_rows failed with ERROR on demo/completions")
    assert failure.user_failure_data.metadata["bad_input"].value is True
    assert blocked in _failure_messages(result) and "error_rows" in _failure_messages(result)

    errors = _checks_by_partition(instance, comp_key, "error_rows")
    assert {k: (r.status.name, _evaluation(r).severity.name) for k, r in errors.items()} == {
        warned: ("FAILED", "WARN"),
        blocked: ("FAILED", "ERROR"),
        clean: ("SUCCEEDED", "ERROR"),  # Dagster's default severity; it only matters on failure
    }
    md = _evaluation(errors[blocked]).metadata
    assert (md["count"].value, md["rows"].value, md["threshold_error"].value) == (1, 3, 0.3)
    assert md["blocking"].value is True and _evaluation(errors[blocked]).blocking is True
    cut = _checks_by_partition(instance, comp_key, "cut_at_max_tokens")
    assert {k: r.status.name for k, r in cut.items()} == dict.fromkeys(keys, "FAILED")
    assert all(_evaluation(r).metadata["share"].value == 1.0 for r in cut.values())
    empty = _checks_by_partition(instance, comp_key, "empty_completions")
    assert set(empty) == set(keys) and all(r.status.name in ("SUCCEEDED", "FAILED") for r in empty.values())
    # Each evaluation targets the shard's materialization, so the UI shows it as the shard's current check.
    for shard, rec in cut.items():
        latest = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=comp_key, asset_partitions=[shard]), limit=1
        ).records[0]
        assert _evaluation(rec).target_materialization_data.storage_id == latest.storage_id

    extraction = _checks_by_partition(instance, answers_key, "extraction_failed")
    evaluated = {k for k, r in extraction.items() if r.status.name in ("SUCCEEDED", "FAILED")}
    assert evaluated == {warned, clean}  # no answers for the blocked shard, so no check on them
    assert _evaluation(extraction[clean]).metadata["rows"].value == 3  # rows with a completion
    assert _evaluation(extraction[warned]).metadata["rows"].value == 3  # 4 rows, 1 without a completion

    # Re-extracting later (answers alone, no model) still keeps the blocked shard's answers back.
    again = materialize(bundle.assets, selection=[answers_key], partition_key=blocked, instance=instance,
                        resources={"settings": settings.run}, raise_on_error=False)  # fmt: skip
    assert not again.success and "blocking check error_rows failed" in _failure_messages(again)
    assert not store.has("answers", blocked)

    # A check run alone (the UI's "Execute" on a check) judges the stored shard with the current thresholds.
    (configs / "demo" / "task_settings.json").write_text(
        json.dumps({"checks": {"cut_at_max_tokens": {"warn": 1, "error": 1}}})
    )
    relaxed = build_task_assets(load_task(configs, "demo"), settings.deployment)
    check_job = define_asset_job(
        "demo_cut_check",
        selection=AssetSelection.checks(AssetCheckKey(comp_key, "cut_at_max_tokens")),
    )
    alone = Definitions(assets=relaxed.all_assets, jobs=[check_job], resources={"settings": settings.run})
    alone = alone.resolve_job_def("demo_cut_check").execute_in_process(
        instance=instance, tags={"dagster/partition": warned}
    )
    assert alone.success
    rec = _checks_by_partition(instance, comp_key, "cut_at_max_tokens")[warned]
    assert (rec.run_id, rec.status.name) == (alone.run_id, "SUCCEEDED")


def test_every_model_gets_the_checks(task_setup, tmp_path):
    configs, data = task_setup
    (configs / "demo" / "task_settings.json").write_text(
        json.dumps({"models": {"second": {"model_path": "/nonexistent/second", "model_type": "hf"}},
                    "checks": {"cut_at_max_tokens": {"error": 0.5, "blocking": True}}})
    )  # fmt: skip
    task = load_task(configs, "demo")
    bundle = build_task_assets(task, _settings(configs, data, tmp_path / "out", "/nonexistent/model").deployment)
    (shards,) = bundle.assets
    want = {
        AssetCheckKey(AssetKey(["demo", *model, asset]), name)
        for model in ([], ["second"])
        for asset, names in (
            ("completions", ("error_rows", "empty_completions", "cut_at_max_tokens")),
            ("answers", ("extraction_failed",)),
        )
        for name in names
    }
    assert set(shards.check_keys) == want
    spec = next(
        s for s in shards.check_specs if s.key == AssetCheckKey(AssetKey(["demo", "completions"]), "cut_at_max_tokens")
    )
    assert spec.blocking and spec.partitions_def is not None and "ERROR above 0.5" in (spec.description or "")

    # A task of many tiny shards may turn them off: no checks declared, none evaluated.
    (configs / "demo" / "task_settings.json").write_text(json.dumps({"checks": {"enabled": False}}))
    off = build_task_assets(load_task(configs, "demo"), _settings(configs, data, tmp_path / "out", "/m").deployment)
    assert set(off.assets[0].check_keys) == set()


def test_answers_rematerialize_without_the_model(instance, task_setup, tmp_path):
    """answers reads completions from disk and calls extract_answer; it never needs a model."""
    configs, data = task_setup
    task = load_task(configs, "demo")
    settings = _settings(configs, data, tmp_path / "out", "/nonexistent/model")
    bundle = build_task_assets(task, settings.deployment)
    store = settings.store("demo")
    register_shards(instance, task, store, str(data), shard_size=4)
    key = registered_keys(instance, task)[0]
    raw_and_prompts = [AssetKey(["demo", "raw"]), AssetKey(["demo", "prompts"])]
    assert materialize(
        bundle.assets,
        selection=raw_and_prompts,
        partition_key=key,
        instance=instance,
        resources={"settings": settings.run},
    ).success
    ids = store.read_frame("prompts", key)["record_id"].to_list()
    responses = ["A fine answer", "nothing", "EXPLODE", "A"]
    store.write_frame(
        "completions",
        key,
        pl.DataFrame(
            {
                "record_id": ids,
                "response": responses,
                "responses": [[r] for r in responses],
                "finish_reason": ["stop"] * 4,
                "finish_reasons": [["stop"]] * 4,
                "prompt_tokens": [1] * 4,
                "completion_tokens": [1] * 4,
                "error": [None] * 4,
                "model": ["m"] * 4,
                "sampling_params": ["{}"] * 4,
            }
        ),
    )
    result = materialize(bundle.assets, selection=[AssetKey(["demo", "answers"])], partition_key=key,
                         instance=instance, resources={"settings": settings.run})  # fmt: skip
    assert result.success
    df = store.read_frame("answers", key)
    assert df["answer"].to_list() == [json.dumps({"length": 13}), None, None, json.dumps({"length": 1})]
    assert df["error"][2] == "extract_answer raised ValueError: cannot parse"
    assert df["error"][1] is None  # None from extract_answer is "no answer", not an error
    md = result.asset_materializations_for_node("demo__shards")[0].metadata
    assert md["extracted"].value == 2 and md["errors"].value == 1


def test_completions_fails_before_loading_a_model_when_prompts_are_missing(
    instance, task_setup, tmp_path, tiny_model_path
):
    configs, data = task_setup
    task = load_task(configs, "demo")
    settings = _settings(configs, data, tmp_path / "out", tiny_model_path)
    bundle = build_task_assets(task, settings.deployment)
    register_shards(instance, task, settings.store("demo"), str(data), shard_size=4)
    key = registered_keys(instance, task)[0]
    result = materialize(bundle.assets, selection=[AssetKey(["demo", "completions"])], partition_key=key,
                         instance=instance, resources={"settings": settings.run}, raise_on_error=False)  # fmt: skip
    assert not result.success
    assert "prompts are not materialized" in _failure_messages(result)
    assert not (tmp_path / "out" / "logs" / "workers").exists()  # no worker (no model) was started


def test_a_launchpad_run_of_another_declared_model_makes_its_own_assets_with_no_refusal(
    instance, task_setup, tmp_path, tiny_model_path
):
    """Models are declared (the default one and the task's named ones); a run only says how fast to make them.

    A run config like the Launchpad's (other workers / batch size) selecting the named model's assets makes
    them under that model's own code version, with no refusal and no reload; the default model's are untouched.
    """
    configs, data = task_setup
    second = tmp_path / "second-model"
    shutil.copytree(tiny_model_path, second)
    (configs / "demo" / "task_settings.json").write_text(
        json.dumps({"models": {"second": {"model_path": str(second), "model_type": "hf", "max_model_len": 64}}})
    )
    task = load_task(configs, "demo")
    settings = _settings(configs, data, tmp_path / "out", tiny_model_path)
    bundle = build_task_assets(task, settings.deployment)
    register_shards(instance, task, settings.store("demo"), str(data), shard_size=4)
    key = registered_keys(instance, task)[-1]  # b.jsonl: 3 plain rows
    defs = Definitions(assets=bundle.all_assets, jobs=[bundle.job], resources={"settings": settings.run})
    named = [AssetKey(["demo", n]) for n in ("raw", "prompts")] + [AssetKey(["demo", "second", n]) for n in
                                                                      ("completions", "answers")]  # fmt: skip
    result = defs.resolve_job_def("demo_job").execute_in_process(
        instance=instance,
        partition_key=key,
        asset_selection=named,
        run_config={"resources": {"settings": {"config": {"use_cpu": True, "batch_size": 2, "workers": 1}}}},
    )
    assert result.success
    versions = code_versions(task, settings.deployment)
    assert versions["second"]["completions"] != versions[None]["completions"]
    for name in ("completions", "answers"):
        event = instance.get_latest_materialization_event(AssetKey(["demo", "second", name]))
        assert event is not None and event.asset_materialization.partition == key
        assert event.asset_materialization.tags["dagster/code_version"] == versions["second"][name]
    comps = bundle.deployment.store("demo").read_frame("completions", key, model="second")
    assert set(comps["model"].to_list()) == {str(second)}
    assert instance.get_materialized_partitions(AssetKey(["demo", "completions"])) == set()  # default untouched
    assert not any("differ" in m for m in _failure_messages(result).splitlines())


def test_chat_prompts_for_a_model_without_a_chat_template_fail_before_loading_it(
    instance, task_setup, tmp_path, tiny_model_path
):
    configs, data = task_setup
    plain_model = tmp_path / "no-template"
    shutil.copytree(tiny_model_path, plain_model)
    (plain_model / "chat_template.jinja").unlink(missing_ok=True)
    cfg = plain_model / "tokenizer_config.json"
    cfg.write_text(json.dumps({k: v for k, v in json.loads(cfg.read_text()).items() if k != "chat_template"}))
    assert has_chat_template(str(plain_model)) is False and has_chat_template(tiny_model_path) is True

    task = load_task(configs, "demo")
    settings = _settings(configs, data, tmp_path / "out", str(plain_model))
    bundle = build_task_assets(task, settings.deployment)
    register_shards(instance, task, settings.store("demo"), str(data), shard_size=4)
    key = registered_keys(instance, task)[0]  # its row 3 is a chat prompt
    three = [AssetKey(["demo", n]) for n in ("raw", "prompts", "completions")]
    result = materialize(bundle.assets, selection=three, partition_key=key, instance=instance,
                         resources={"settings": settings.run}, raise_on_error=False)  # fmt: skip
    assert not result.success
    assert "has no chat template" in _failure_messages(result)
    assert not (tmp_path / "out" / "logs" / "workers").exists()  # no worker (no model) was started


def _failure_messages(result) -> str:
    failures = [e.step_failure_data for e in result.all_events if e.is_step_failure and e.step_failure_data]
    return "\n".join(
        ((f.user_failure_data.description or "") if f.user_failure_data else "") + (f.error.message if f.error else "")
        for f in failures
    )


def test_every_example_task_builds_assets_and_jobs():
    from llm_infer_dagster.orchestration.definitions import build_task_bundles

    settings = Settings(task_configs=str(REPO / "task_configs"), output_dir="/tmp/unused")
    bundles = build_task_bundles(settings.deployment)
    names = {b.task.name for b in bundles}
    assert {"basic_example", "qa_regex", "chat_example"} <= names
    for b in bundles:
        assert {k for a in b.assets for k in a.keys} >= {b.key(n) for n in ("raw", "prompts", "completions", "answers")}
        assert b.job.name == f"{b.task.dagster_name}_job"
