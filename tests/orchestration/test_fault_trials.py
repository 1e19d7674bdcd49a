"""Fault trials (issue 13) sized for CI: random SIGKILLs of llm-infer, a killed engine worker, a full disk.

The trials and their checks are ``fault_harness.py``'s, which ``benchmarks/faults.py`` runs at full size. Each
test runs the real command with the real HF engine on the tiny model over 60 rows in 6 shards.
(Two concurrent llm-infer on one output are tested in test_faults.py; the benchmark repeats them.)
"""

from __future__ import annotations

import random
from pathlib import Path

import fault_harness as fh
import pytest

SIZE = {"files": 2, "rows_per_file": 30, "shard_size": 10}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_random_sigkills_then_resume_are_exact(tmp_path: Path, tiny_model_path: str) -> None:
    """Two SIGKILLs of the whole process group at seeded random moments; the resume leaves the job exact."""
    rng = random.Random(13)
    # The moment is drawn over a typical uninterrupted run of this size on a 2-vCPU machine (no calibration
    # run: a kill drawn past the end just finds the run finished, which the checks cover as well).
    trials = [fh.sigkill_trial(fh.Job(tiny_model_path, _root(tmp_path, i), **SIZE), rng, 8.0) for i in range(2)]
    problems = [t.line() for t in trials if not t.ok]
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_killed_worker_fails_only_its_shards_and_the_next_run_is_exact(tmp_path: Path, tiny_model_path: str) -> None:
    # Small shards, many: the queue must still hold shards once both workers have loaded and one is killed.
    job = fh.Job(tiny_model_path, tmp_path, workers=2, files=2, rows_per_file=60, shard_size=5)
    trial = fh.worker_kill_trial(job, random.Random(13))
    assert trial.ok, trial.line()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_disk_full_mid_run_is_one_line_keeps_shards_and_resumes_exactly(tmp_path: Path, tiny_model_path: str) -> None:
    out = tmp_path / "out"
    if why := fh.mount_tmpfs(out, "32m"):
        pytest.skip(f"needs a tmpfs for the output dir and mounting one is not permitted here ({why})")
    try:
        trial = fh.disk_full_trial(fh.Job(tiny_model_path, tmp_path, out=out, **SIZE), after_shards=2)
    finally:
        fh.umount(out)
    assert trial.ok, trial.line()
    assert not trial.warnings, trial.warnings  # one line on the terminal, nothing else


def _root(tmp: Path, i: int) -> Path:
    root = tmp / f"trial-{i}"
    root.mkdir()
    return root
