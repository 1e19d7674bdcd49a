"""Helpers shared by the subprocess tests (imported as a plain module: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dagster import DagsterInstance

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "task_configs"


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no LLM_INFER_* or DAGSTER_HOME leaking in from the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_INFER_", "DAGSTER_HOME"))}
    env["CUDA_VISIBLE_DEVICES"] = ""  # this machine has no GPU; make that explicit
    env.update(extra)
    return env


def instance_at(output: Path) -> DagsterInstance:
    """The persistent instance llm-infer keeps under <output>/.dagster."""
    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(output / ".dagster")
    try:
        return DagsterInstance.get()
    finally:
        if old is None:
            del os.environ["DAGSTER_HOME"]
        else:
            os.environ["DAGSTER_HOME"] = old


def write_qa_input(path: Path, files: int, rows: int) -> None:
    """JSONL input for the qa_regex example task."""
    path.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        with (path / f"part-{f:03d}.jsonl").open("w") as fh:
            for i in range(rows):
                fh.write(json.dumps({"question": f"What is {f} + {i}?", "gold": f + i}) + "\n")


def llm_infer(
    *args: str, env: dict[str, str] | None = None, timeout: int = 300, progress: bool = False
) -> subprocess.CompletedProcess:
    """Run `python -m llm_infer_dagster` (the `llm-infer` command) as a user would (with its progress bar on
    stderr if ``progress``)."""
    return subprocess.run(
        [sys.executable, "-m", "llm_infer_dagster", *([] if progress else ["--no_progress"]), *args],
        capture_output=True, text=True, env=env or cli_env(), timeout=timeout, cwd=REPO,
    )  # fmt: skip


def sigkill_llm_infer_after(
    args: list[str], shards_dir: Path, shards: int, timeout: float = 600, env: dict[str, str] | None = None
) -> None:
    """Start `llm-infer args`, wait until `shards` shard files exist in `shards_dir`, then SIGKILL it.

    Its engine workers, and their engines' own processes, die with it (process_tree.py); the short sleep
    lets that finish.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_infer_dagster", "--no_progress", *args],
        cwd=REPO, env=env or cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(list(shards_dir.glob("*.parquet"))) < shards:
        assert proc.poll() is None, "llm-infer ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2.0)


def orphaned_engine_processes() -> set[int]:
    """pids of vLLM engine processes whose parent is gone (reparented to init)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if comm.startswith("VLLM::") and ppid == 1:
            found.add(int(entry.name))
    return found


def new_orphans_after(before: set[int], timeout: float = 30.0) -> set[int]:
    """Engine processes orphaned since ``before`` that are still alive ``timeout`` s on (dying takes a moment)."""
    deadline = time.monotonic() + timeout
    while (left := orphaned_engine_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


class Settings:
    """A test's deployment and run settings, made from one set of keyword arguments (split by field name)."""

    def __init__(self, **kw: object) -> None:
        from llm_infer_dagster.deployment import Deployment
        from llm_infer_dagster.orchestration.settings import RunSettings

        run_fields = set(RunSettings.model_fields)
        self.deployment = Deployment.from_env(**{k: v for k, v in kw.items() if k not in run_fields})
        self.run = RunSettings(**{k: v for k, v in kw.items() if k in run_fields})

    def store(self, task_name: str):  # noqa: ANN201 - a TaskStore
        return self.deployment.store(task_name)


def write_seed_output(out: Path, input_path: Path, rows: list[dict], tasks: int, done: int) -> None:
    """An output folder written the original llm-infer's way: ``tasks`` contiguous chunks of all rows
    (``ceil(N / tasks)`` rows each), the first ``done`` of them finished (results, extract, marker, log).

    The files as the seed wrote them: ``args.json`` (its flags plus derived paths), ``results/infer/<NNNNN>.json``
    and ``results/extract/<NNNNN>.json`` (JSON arrays of records), an empty ``logs/completions/<NNNNN>`` marker
    per finished task, ``logs/tasks/<NNNNN>.log`` and ``logs/main.log``.
    """
    import math

    size = math.ceil(len(rows) / tasks)
    results, logs = out / "results", out / "logs"
    args = {
        "model_path": "/models/qwen", "model_type": "vllm", "output_path": str(out), "task_name": "qa_regex",
        "input_path": str(input_path), "tasks": tasks, "workers": 1, "tensor_parallel_size": 1, "use_cpu": False,
        "extract_only": False, "rerun": False, "save_text": False, "limit": None, "id_length": 5,
        "result_path": str(results), "infer_result_path": str(results / "infer"),
        "extract_result_path": str(results / "extract"), "log_path": str(logs), "task_log_path": str(logs / "tasks"),
        "completion_path": str(logs / "completions"),
    }  # fmt: skip
    for sub in ("results/infer", "results/extract", "logs/tasks", "logs/completions"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(args, indent=4, ensure_ascii=False))
    (logs / "main.log").write_text("2026-01-05 10:00:00 - INFO - start\n")
    for t in range(tasks):
        (logs / "tasks" / f"{t:05d}.log").write_text(f"2026-01-05 10:00:0{t % 10} - INFO - task {t} started\n")
        if t >= done:
            continue
        records = [
            {"file_name": "part-000.jsonl", "file_idx": i, "origin_data": row, "prompt": f"Q: {row['question']}",
             "model_response": f"The answer is {row['gold']}."}
            for i, row in enumerate(rows[t * size : (t + 1) * size], start=t * size)
        ]  # fmt: skip
        (results / "infer" / f"{t:05d}.json").write_text(json.dumps(records, ensure_ascii=False, indent=4))
        extracted = [{**r, "extracted_answer": r["origin_data"]["gold"]} for r in records]
        (results / "extract" / f"{t:05d}.json").write_text(json.dumps(extracted, ensure_ascii=False, indent=4))
        (logs / "completions" / f"{t:05d}").touch()


def tree_digest(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` -> the sha256 of its bytes ("dir" for a folder)."""
    import hashlib

    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }
