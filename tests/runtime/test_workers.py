"""The one choice of engine workers and the one GPU rule (runtime/workers.py); no worker is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_infer_dagster.engines.spec import EngineSpec
from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.runtime.pool import WorkerPool
from llm_infer_dagster.runtime.workers import devices_in_use, gpus_needed, open_worker_pool


def test_the_gpu_rule() -> None:
    assert gpus_needed(2, 4, use_cpu=False, ray_address=None) == 8
    assert gpus_needed(2, 4, use_cpu=True, ray_address=None) == 0
    assert gpus_needed(2, 4, use_cpu=False, ray_address="auto") == 0  # Ray places the GPUs


def test_devices_held_for_device_hours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert devices_in_use(2, 4, use_cpu=False, ray_address=None) == (8, "GPU")
    assert devices_in_use(2, 4, use_cpu=False, ray_address="auto") == (8, "GPU")  # Ray gives each actor tp GPUs
    assert devices_in_use(3, 1, use_cpu=True, ray_address=None) == (15, "CPU")  # 16 // 3 threads each
    assert devices_in_use(3, 1, use_cpu=True, ray_address="auto") == (3, "CPU")  # one core per actor
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert devices_in_use(2, 1, use_cpu=True, ray_address=None) == (8, "CPU")
    assert devices_in_use(8, 1, use_cpu=True, ray_address=None) == (16, "CPU")  # no more than the machine has


def _open(tmp_path: Path, **kw: object):  # noqa: ANN202 - the context manager
    spec = EngineSpec(model_type="hf", model_path="/m", device="cpu" if kw.get("use_cpu") else "cuda")
    args = {"workers": 2, "tensor_parallel_size": 2, "use_cpu": False, "ray_address": None, **kw}
    return open_worker_pool(spec, {}, log_dir=tmp_path, shard_timeout=None, on_message=lambda _i, _m: None,
                            log_info=print, log_warning=print, **args)  # fmt: skip


def test_local_workers_get_the_seeds_gpu_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    with _open(tmp_path) as pool:
        assert isinstance(pool, WorkerPool) and pool.gpu_slices == [["4", "5"], ["6", "7"]]
    with _open(tmp_path, use_cpu=True) as pool:
        assert isinstance(pool, WorkerPool) and pool.gpu_slices is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(SettingsError, match="2 x 2 = 4 GPUs, but 2 are visible"), _open(tmp_path):
        pass
