"""A code location for tests/orchestration/test_gpu_executor.py: assets that record which GPUs their step process saw.

GPU ids are labels ("g0", "g1"): the executor's leases are host-level locks, testable without a GPU.
"""

import json
import os
import signal
import time

from dagster import AssetExecutionContext, AssetMaterialization, Definitions, Output, asset, define_asset_job

from llm_infer_dagster.orchestration.dagster_internals.gpu_executor import gpu_executor


def _record(name: str) -> None:
    start = time.time()
    if os.environ.get("LEASE_TEST_CRASH") == name:
        os.kill(os.getpid(), signal.SIGKILL)  # die holding the lease
    time.sleep(float(os.environ.get("LEASE_TEST_SLEEP", "2")))
    with open(os.environ["LEASE_TEST_LOG"], "a") as f:
        f.write(
            json.dumps(
                {
                    "asset": name,
                    "pid": os.getpid(),
                    "start": start,
                    "end": time.time(),
                    "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
                }
            )
            + "\n"
        )


@asset(op_tags={"llm_infer/gpus": "2"})
def needs_two() -> None:
    _record("needs_two")


@asset(op_tags={"llm_infer/gpus": "1"})
def needs_one() -> None:
    _record("needs_one")


@asset
def before_three() -> None:
    _record("before_three")


@asset(op_tags={"llm_infer/gpus": "3"}, deps=[before_three])
def needs_three() -> None:
    _record("needs_three")


@asset
def cpu_a() -> None:
    _record("cpu_a")


@asset
def cpu_b() -> None:
    _record("cpu_b")


@asset
def logs_shards(context: AssetExecutionContext) -> Output[None]:
    """Records shards the way the task step does: materializations logged as it goes (GpuExecutor._pop_events)."""
    for shard in ("s0", "s1", "s2"):
        context.log_event(AssetMaterialization(asset_key="shard_records", partition=shard, metadata={"n": 1}))
    return Output(None)


defs = Definitions(
    assets=[needs_two, needs_one, before_three, needs_three, cpu_a, cpu_b, logs_shards],
    jobs=[
        define_asset_job("two", ["needs_two"]),
        define_asset_job("one", ["needs_one"]),
        # A CPU step first, as raw/prompts come before completions: a GPU need too big must stop it running.
        define_asset_job("three", ["before_three", "needs_three"]),
        define_asset_job("cpu", ["cpu_a", "cpu_b"]),
        define_asset_job("shard_records", ["logs_shards"]),
    ],
    executor=gpu_executor,
)
