"""Staleness is visible: each asset's code version covers exactly what determines it, so Dagster's own
stale-status resolver marks exactly the right shards stale after each kind of change."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, Definitions, build_schedule_context
from dagster._core.definitions.data_version import StaleStatus
from dagster._core.storage.defs_state.base import set_defs_state_storage
from tests_support import CONFIGS, Settings, write_qa_input

from llm_infer_dagster.orchestration.assets.factory import build_task_assets
from llm_infer_dagster.orchestration.registry import register_shards, registered_keys
from llm_infer_dagster.orchestration.sensors import build_missing_shards_schedule
from llm_infer_dagster.orchestration.staleness import ChainVersions, stale_keys, stale_resolver
from llm_infer_dagster.shards.planning import plan_runs
from llm_infer_dagster.shards.tables import ASSETS
from llm_infer_dagster.tasks.loader import load_task


def batched(d: Definitions, instance: DagsterInstance, keys: list[str]) -> dict[str, set[str]]:
    """What llm-infer and the schedule plan from: ChainVersions, one query per asset."""
    versions = ChainVersions(instance, d.resolve_asset_graph(), AssetKey(["qa_regex", "input"]), keys)
    stale = versions.stale([AssetKey(["qa_regex", a]) for a in ASSETS])
    return {a: stale[AssetKey(["qa_regex", a])] for a in ASSETS}


@pytest.mark.slow
def test_each_change_marks_exactly_the_right_assets_stale(tmp_path: Path, tiny_model_path: str, monkeypatch) -> None:
    configs, data, out = tmp_path / "configs", tmp_path / "data", tmp_path / "out"
    shutil.copytree(CONFIGS / "qa_regex", configs / "qa_regex", ignore=shutil.ignore_patterns("data"))
    write_qa_input(data, files=1, rows=5)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    model_copy = tmp_path / "other-model"
    shutil.copytree(tiny_model_path, model_copy)

    def settings(model: str = tiny_model_path) -> Settings:
        return Settings(task_configs=str(configs), input_path=str(data), output_dir=str(out),
                                 model_path=model, model_type="hf", use_cpu=True)  # fmt: skip

    def defs(model: str = tiny_model_path) -> Definitions:
        s = settings(model)
        bundle = build_task_assets(load_task(configs, "qa_regex"), s.deployment)
        d = Definitions(assets=bundle.all_assets, jobs=[bundle.job], resources={"settings": s.run})
        # Resolved (and cached) outside any instance's defs-state context: Dagster's definitions load reads the
        # "current" defs state storage, whose instance weakref a run executed in process can leave dead (seen
        # once in CI: "Attempted to resolve undefined DagsterInstance weakref"). These assets keep no defs state.
        with set_defs_state_storage(None):
            d.resolve_asset_graph()
        return d

    def status(d: Definitions, instance: DagsterInstance, key: str) -> dict[str, StaleStatus]:
        resolver = stale_resolver(instance, d.resolve_asset_graph())  # what the UI's "stale" badge uses
        return {a: resolver.get_status(AssetKey(["qa_regex", a]), key) for a in ASSETS}

    def stale(d: Definitions, instance: DagsterInstance, keys: list[str]) -> dict[str, set[str]]:
        per_asset: dict[str, set[str]] = {a: set() for a in ASSETS}
        for k in keys:
            for a, st in status(d, instance, k).items():
                if st != StaleStatus.FRESH:
                    per_asset[a].add(k)
        assert batched(d, instance, keys) == per_asset  # the planner's bulk read agrees with the UI's resolver
        return per_asset

    with DagsterInstance.get() as instance:
        task = load_task(configs, "qa_regex")
        register_shards(instance, task, settings().store("qa_regex"), str(data), shard_size=2)
        keys = registered_keys(instance, task)
        d = defs()
        result = d.resolve_job_def("qa_regex_job").execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        )
        assert result.success
        none = {a: set() for a in ASSETS}
        assert stale(defs(), instance, keys) == none  # a range run leaves nothing stale

        template = configs / "qa_regex" / "prompt_template.txt"
        original = template.read_text()
        template.write_text(original.replace("Solve the problem", "Solve this problem"))
        assert stale(defs(), instance, keys) == {"raw": set(), "prompts": set(keys), "completions": set(keys),
                                                 "answers": set(keys)}  # fmt: skip
        template.write_text(original)
        assert stale(defs(), instance, keys) == none

        cfg = configs / "qa_regex" / "task_config.py"
        code = cfg.read_text()
        cfg.write_text(code.replace("return int(match.group(1)) if match else None",
                                    "return int(match.group(1)) if match else -1"))  # fmt: skip
        assert stale(defs(), instance, keys) == {"raw": set(), "prompts": set(), "completions": set(),
                                                 "answers": set(keys)}  # fmt: skip
        cfg.write_text(code)

        other_model = stale(defs(str(model_copy)), instance, keys)
        assert other_model == {"raw": set(), "prompts": set(), "completions": set(keys), "answers": set(keys)}

        sp = configs / "qa_regex" / "sampling_params.json"
        sp.write_text(json.dumps({**json.loads(sp.read_text()), "max_tokens": 9}))
        assert stale(defs(), instance, keys)["completions"] == set(keys)


@pytest.mark.slow
def test_a_new_row_makes_only_that_files_last_shard_stale_and_planning_redoes_it(
    tmp_path: Path, tiny_model_path: str, monkeypatch
) -> None:
    """Input rows are observed per shard: a row appended to one file changes only its last shard's data version."""
    configs, data, out = tmp_path / "configs", tmp_path / "data", tmp_path / "out"
    shutil.copytree(CONFIGS / "qa_regex", configs / "qa_regex", ignore=shutil.ignore_patterns("data"))
    write_qa_input(data, files=2, rows=3)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    s = Settings(task_configs=str(configs), input_path=str(data), output_dir=str(out),
                          model_path=tiny_model_path, model_type="hf", use_cpu=True)  # fmt: skip
    task = load_task(configs, "qa_regex")
    bundle = build_task_assets(task, s.deployment)
    d = Definitions(assets=bundle.all_assets, jobs=[bundle.job], resources={"settings": s.run})
    with DagsterInstance.get() as instance:
        register_shards(instance, task, s.store("qa_regex"), str(data), shard_size=2)
        keys = registered_keys(instance, task)  # part_000: rows 0-1, 2; part_001: rows 0-1, 2
        assert len(keys) == 4
        result = d.resolve_job_def("qa_regex_job").execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        )
        assert result.success

        def stale_now() -> dict[str, set[str]]:
            resolver = stale_resolver(instance, d.resolve_asset_graph())
            now = {a: stale_keys(resolver, [bundle.key(a)], keys) for a in ASSETS}
            assert batched(d, instance, keys) == now
            return now

        assert stale_now() == {a: set() for a in ASSETS}
        with (data / "part-001.jsonl").open("a") as f:
            f.write(json.dumps({"question": "What is 9 + 9?", "gold": 18}) + "\n")
        reg = register_shards(instance, task, s.store("qa_regex"), str(data), shard_size=2)
        assert reg.new_keys == [] and reg.changed_keys == [keys[3]]  # the partial last shard took the row
        assert stale_now()["raw"] == {keys[3]}  # only that file's last shard; the others stay fresh

        done = instance.get_materialized_partitions(bundle.key("completions"))
        stale = stale_keys(stale_resolver(instance, d.resolve_asset_graph()),
                           [bundle.key(a) for a in ("raw", "prompts", "completions")], keys)  # fmt: skip
        plans = plan_runs(keys, done, instance.get_materialized_partitions(bundle.key("answers")),
                          stale_completions=stale)  # fmt: skip
        assert [(p.first, p.last, p.assets) for p in plans] == [(keys[3], keys[3], ASSETS)]
        schedule = build_missing_shards_schedule(bundle)  # the schedule plans the same way
        requests = schedule(
            build_schedule_context(
                instance=instance, resources={"settings": s.run}, scheduled_execution_time=datetime.now(UTC)
            )
        )
        assert [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"],
                 len(r.asset_selection)) for r in requests] == [(keys[3], keys[3], 4)]  # fmt: skip
        again = d.resolve_job_def("qa_regex_job").execute_in_process(instance=instance, partition_key=keys[3])
        assert again.success
        assert s.store("qa_regex").read_frame("answers", keys[3]).height == 2  # the grown shard has both rows
        assert stale_now() == {a: set() for a in ASSETS}


def test_function_fingerprint_follows_helpers_and_constants(tmp_path: Path) -> None:
    from llm_infer_dagster.tasks.versions import function_fingerprint

    def load(src: str):
        import importlib.util

        path = tmp_path / f"m{abs(hash(src))}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    base = "PREFIX = 'Q: '\ndef helper(x):\n    return PREFIX + x\ndef format_prompt(d):\n    return helper(d['q'])\n"
    fp = function_fingerprint(load(base), ["format_prompt"])
    assert function_fingerprint(load(base.replace("'Q: '", "'Question: '")), ["format_prompt"]) != fp
    assert function_fingerprint(load(base.replace("PREFIX + x", "PREFIX + x.strip()")), ["format_prompt"]) != fp
    other = base + "def extract_answer(r):\n    return r\n"
    assert function_fingerprint(load(other), ["format_prompt"]) == fp  # an unrelated function does not count


def test_stale_in_chain_compares_recorded_versions_with_what_current_code_derives() -> None:
    from dagster import DataVersion
    from dagster._core.definitions.data_version import compute_logical_data_version

    from llm_infer_dagster.orchestration.staleness import Link, stale_in_chain

    inp, raw, prompts = AssetKey(["t", "input"]), AssetKey(["t", "raw"]), AssetKey(["t", "prompts"])

    def v(code: str, parent: AssetKey, version: str) -> str:
        return compute_logical_data_version(code, {parent: DataVersion(version)}).value

    source = {"a": "rows-a", "b": "rows-b2", "c": "rows-c"}  # b's rows changed since raw was made
    raw_rec = {"a": v("r1", inp, "rows-a"), "b": v("r1", inp, "rows-b1"), "c": v("r1", inp, "rows-c")}
    prompts_rec = {k: v("p1", raw, raw_rec[k]) for k in ("a", "b")}  # c has no prompts yet
    chain = [Link(raw, "r1", raw_rec), Link(prompts, "p1", prompts_rec)]
    assert stale_in_chain(["a", "b", "c", "d"], inp, source, chain) == {raw: {"b"}, prompts: set()}
    # A new prompt template: every recorded prompts shard is stale, raw is not.
    chain = [Link(raw, "r1", raw_rec), Link(prompts, "p2", prompts_rec)]
    assert stale_in_chain(["a", "b", "c"], inp, source, chain) == {raw: {"b"}, prompts: {"a", "b"}}
    # An input with no observation counts as Dagster's default version.
    assert stale_in_chain(["x"], inp, {}, [Link(raw, "r1", {"x": v("r1", inp, "INITIAL")})]) == {raw: set()}


def test_a_run_range_never_spans_a_shard_left_out_of_keys() -> None:
    """Shards kept because their input shrank are not in ``keys``: no partition range may cover them."""
    order = ["a", "b", "c", "d"]
    plans = plan_runs(["a", "c", "d"], set(), set(), order=order)
    assert [(p.first, p.last) for p in plans] == [("a", "a"), ("c", "d")]
    assert [(p.first, p.last) for p in plan_runs(["a", "c", "d"], set(), set())] == [("a", "d")]
