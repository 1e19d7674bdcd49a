"""Which engine workers a run gets: local processes on GPU slices, local processes on CPU, or Ray actors.

The one place that chooses (:func:`open_worker_pool`) and the one GPU rule (:func:`gpus_needed`): the executor
leases that many GPUs for a step, ``llm-infer`` (and ``--plan_only``) refuses a run whose need the machine
cannot meet, and the pool slices the leased GPUs ``[i*tp, (i+1)*tp)`` per worker. No Dagster here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llm_infer_dagster.engines.spec import EngineSpec
from llm_infer_dagster.runtime.gpus import split_gpus, visible_gpu_ids
from llm_infer_dagster.runtime.messages import WorkerEvent
from llm_infer_dagster.runtime.pool import WorkerPool


def gpus_needed(workers: int, tensor_parallel_size: int, *, use_cpu: bool, ray_address: str | None) -> int:
    """GPUs a model step leases on this machine: workers x tensor_parallel_size; none on CPU, none on Ray
    (Ray places its actors and gives them their GPUs)."""
    return 0 if use_cpu or ray_address else workers * tensor_parallel_size


@contextlib.contextmanager
def open_worker_pool(
    spec: EngineSpec,
    sampling: dict[str, Any],
    *,
    workers: int,
    tensor_parallel_size: int,
    use_cpu: bool,
    ray_address: str | None,
    log_dir: Path,
    shard_timeout: float | None,
    on_message: Callable[[int, WorkerEvent], None],
    log_info: Callable[[str], None],
    log_warning: Callable[[str], None],
) -> Iterator[Any]:
    """The pool a run's engine group uses, open for the ``with`` block (a Ray session lasts as long).

    Yields a :class:`~llm_infer_dagster.runtime.pool.WorkerPool` or a
    :class:`~llm_infer_dagster.runtime.ray_pool.RayWorkerPool`: both ``run(jobs, count)`` and yield one
    ``ShardResult`` per job as shards finish.
    """
    if ray_address:  # the workers are Ray actors, placed (and given GPUs) by Ray
        from llm_infer_dagster.runtime.ray_pool import RayWorkerPool, ray_session

        local_gpus = 0 if use_cpu else len(visible_gpu_ids())
        with ray_session(ray_address, num_gpus=local_gpus):
            log_info(f"engine workers: {workers} Ray actor(s) via ray_address={ray_address}")
            yield RayWorkerPool(
                spec,
                sampling,
                workers=workers,
                log_dir=log_dir,
                on_message=on_message,
                on_placed=lambda i, where: log_info(f"worker {i}: {where}"),
                on_pending=lambda _i, why: log_warning(why),
                shard_timeout=shard_timeout,
                num_gpus=0 if use_cpu else tensor_parallel_size,
            )
        return
    slices = None if use_cpu else split_gpus(visible_gpu_ids(), workers, tensor_parallel_size)
    yield WorkerPool(
        spec,
        sampling,
        workers=workers,
        gpu_slices=slices,
        log_dir=log_dir,
        on_message=on_message,
        shard_timeout=shard_timeout,
    )


def devices_in_use(
    workers: int, tensor_parallel_size: int, *, use_cpu: bool, ray_address: str | None
) -> tuple[int, str]:
    """``(count, "GPU" | "CPU")``: what a model step holds while it runs, for its device-hours.

    GPUs: workers x tensor_parallel_size, on this machine or as Ray actors. CPU: the cores the engines' threads
    use: each local worker gets ``OMP_NUM_THREADS`` (the pool sets ``cpu_count // workers`` when unset), at most
    this machine's cores in all; a Ray actor one core unless ``OMP_NUM_THREADS`` says otherwise (``ray_pool.py``).
    """
    if not use_cpu:
        return workers * tensor_parallel_size, "GPU"
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        threads = int(omp)
    else:
        threads = 1 if ray_address else max(1, (os.cpu_count() or 1) // workers)
    cores = workers * threads
    return (cores if ray_address else min(cores, os.cpu_count() or cores)), "CPU"  # threads beyond the cores add none
