"""How resume planning grows with the number of shards: the bulk data-version read vs Dagster's resolver.

    python benchmarks/planning.py [--shards 2000,10000] [--resolver-sample 200] [--work-dir /tmp/plan-bench]

For each size, a fresh sqlite instance (the pooled event log llm-infer uses) gets what a finished job leaves:
one input observation and one materialization of raw, prompts, completions and answers per shard, each with
the data version Dagster derives (runless events written in batches: this measures planning, not writing).
First it times single event writes on a stock and a pooled sqlite instance. Then it times
``ChainVersions(...).stale(...)`` over every shard (what ``llm-infer`` and the schedule do) and
Dagster's ``CachingStaleStatusResolver`` over ``--resolver-sample`` shards (extrapolated per shard), and
checks both find nothing stale.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from dagster import AssetKey, AssetMaterialization, AssetObservation, AssetSpec, DagsterInstance, Definitions
from dagster._core.definitions.data_version import DATA_VERSION_IS_USER_PROVIDED_TAG, DATA_VERSION_TAG

from llm_infer_dagster.orchestration.assets.provenance import shard_tags
from llm_infer_dagster.orchestration.dagster_internals.event_batches import report_runless_asset_events
from llm_infer_dagster.orchestration.dagster_internals.sqlite_events import instance_yaml
from llm_infer_dagster.orchestration.staleness import ChainVersions, stale_keys, stale_resolver
from llm_infer_dagster.shards.tables import ASSETS


def build(work: Path, shards: int) -> tuple[DagsterInstance, Definitions, AssetKey, list[AssetKey], list[str]]:
    from dagster import DataVersion, DynamicPartitionsDefinition

    home = work / f"home-{shards}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(instance_yaml(home))
    instance = DagsterInstance.from_config(str(home))
    pdef = DynamicPartitionsDefinition(name="bench_shards")
    keys = [f"part_{i // 512:04d}_jsonl-0123abcd-{i % 512:05d}" for i in range(shards)]
    instance.add_dynamic_partitions("bench_shards", keys)
    inp = AssetKey(["bench", "input"])
    chain = [AssetKey(["bench", n]) for n in ASSETS]
    specs = [AssetSpec(inp, partitions_def=pdef)]
    parent = inp
    for key in chain:
        specs.append(AssetSpec(key, deps=[parent], partitions_def=pdef, code_version=f"v-{key.path[-1]}"))
        parent = key
    events: list[AssetObservation | AssetMaterialization] = []
    for k in keys:
        version = DataVersion(f"rows-{k}")
        events.append(AssetObservation(asset_key=inp, partition=k, tags={
            DATA_VERSION_TAG: version.value, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"}))  # fmt: skip
        parent = inp
        for key in chain:
            version, tags = shard_tags(f"v-{key.path[-1]}", {parent: version}, None)
            events.append(AssetMaterialization(asset_key=key, partition=k, tags=tags))
            parent = key
    report_runless_asset_events(instance, events)
    return instance, Definitions(assets=specs), inp, chain, keys


def event_cost(work: Path, events: int = 300) -> dict[str, float]:
    """ms per runless observation, written one at a time, on a stock and on a pooled sqlite instance."""
    out = {}
    for name, yaml_text in (("stock", "telemetry:\n  enabled: false\n"), ("pooled", None)):
        home = work / f"events-{name}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        (home / "dagster.yaml").write_text(yaml_text or instance_yaml(home))
        instance = DagsterInstance.from_config(str(home))
        t0 = time.perf_counter()
        for i in range(events):
            instance.report_runless_asset_event(AssetObservation(asset_key=AssetKey("x"), partition=f"p{i}"))
        out[f"{name}_ms_per_event"] = round((time.perf_counter() - t0) / events * 1000, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", default="2000,10000")
    ap.add_argument("--resolver-sample", type=int, default=200)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/plan-bench"))
    args = ap.parse_args()
    print(json.dumps({"event_write": event_cost(args.work_dir)}), flush=True)
    rows = []
    for n in [int(x) for x in args.shards.split(",")]:
        t0 = time.perf_counter()
        instance, defs, inp, chain, keys = build(args.work_dir, n)
        built = time.perf_counter() - t0
        graph = defs.resolve_asset_graph()
        t0 = time.perf_counter()
        stale = ChainVersions(instance, graph, inp, keys).stale(chain)
        bulk = time.perf_counter() - t0
        assert not any(stale.values()), "nothing should be stale"
        sample = keys[: args.resolver_sample]
        t0 = time.perf_counter()
        resolver = stale_resolver(instance, graph)
        assert not stale_keys(resolver, chain, sample)
        per_shard = (time.perf_counter() - t0) / len(sample)
        rows.append({"shards": n, "write_events_s": round(built, 1), "bulk_plan_s": round(bulk, 2),
                     "resolver_per_shard_ms": round(per_shard * 1000, 1),
                     "resolver_all_shards_est_s": round(per_shard * n, 1)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print("\n| shards | bulk planning (ChainVersions) | Dagster resolver, per shard | resolver, all shards (est.) |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shards']:,} | {r['bulk_plan_s']} s | {r['resolver_per_shard_ms']} ms | "
              f"{r['resolver_all_shards_est_s']} s |")  # fmt: skip


if __name__ == "__main__":
    main()
