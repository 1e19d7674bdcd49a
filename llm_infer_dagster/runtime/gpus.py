"""Pure GPU slicing: which GPU ids each engine worker gets (the seed's ``[i*tp, (i+1)*tp)`` rule)."""

from __future__ import annotations

from collections.abc import Sequence

from llm_infer_dagster.errors import SettingsError


def check_gpu_need(
    need: int,
    gpu_ids: Sequence[str],
    *,
    workers: int | None = None,
    tensor_parallel_size: int | None = None,
    source: str = "CUDA_VISIBLE_DEVICES",
) -> None:
    """The one GPU rule, wherever it is checked: a run needs workers x tensor_parallel_size of the GPUs it has.

    ``source`` says where ``gpu_ids`` came from, so the message says what to change.
    """
    if need <= len(gpu_ids):
        return
    what = (
        f"workers x tensor_parallel_size = {workers} x {tensor_parallel_size} = {need} GPUs"
        if workers is not None and tensor_parallel_size is not None
        else f"{need} GPUs (workers x tensor_parallel_size)"
    )
    raise SettingsError(
        f"{what}, but {len(gpu_ids)} are visible ({source}: {','.join(gpu_ids) or 'none'}); "
        "lower them, or pass --use_cpu"
    )


def split_gpus(gpu_ids: Sequence[str], workers: int, tensor_parallel_size: int) -> list[list[str]]:
    """Worker i gets ``gpu_ids[i*tp:(i+1)*tp]``; asking for more GPUs than given is an error."""
    check_gpu_need(workers * tensor_parallel_size, gpu_ids, workers=workers, tensor_parallel_size=tensor_parallel_size)
    tp = tensor_parallel_size
    return [list(gpu_ids[i * tp : (i + 1) * tp]) for i in range(workers)]


def visible_gpu_ids() -> list[str]:
    """GPU ids this process may use, read without initialising CUDA (engine children must do that).

    ``CUDA_VISIBLE_DEVICES`` when set, else what ``nvidia-smi -L`` lists, else none.
    """
    import os

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [g.strip() for g in env.split(",") if g.strip()]
        return [] if ids[:1] == ["-1"] else ids
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in out.stdout.splitlines() if ln.startswith("GPU "))]
