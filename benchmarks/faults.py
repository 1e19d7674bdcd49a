"""Fault trials of `llm-infer` at full size (issue 13): break real runs in random ways, resume, check exactness.

    python benchmarks/faults.py [--sigkill 20] [--worker-kill 2] [--concurrent 3] [--disk-full 2] [--seed 13] \
        [--files 3] [--rows 100] [--shard-size 20] [--work-dir DIR] [--keep]

Every trial runs the real command (`python -m llm_infer_dagster`) with the real HF engine on the tiny model
(`build_tiny_model`), the example task `qa_regex` and generated input (by default 300 rows in 15 shards), on
a fresh output dir. The cases, and what counts as a problem, are in `tests/fault_harness.py`, which
`tests/orchestration/test_fault_trials.py` runs at CI size:

- sigkill: SIGKILL of the whole `llm-infer` process group at a random moment (half the trials at a time drawn
  over an uninterrupted run, half just after a random number of shards), then the same command again;
- worker kill: `--workers 2`, SIGKILL one engine worker after the first completions shard lands;
- two concurrent: two `llm-infer` on the same task and output dir, the second 0-2 s after the first;
- disk full: the output dir on a 32 MiB tmpfs, filled by a ballast file once a few shards exist; then the
  ballast goes and the same command resumes (needs root to mount a tmpfs; skipped otherwise).

After each trial: exactly N unique record_ids in the answers Parquet and in results/extract, every Parquet
readable, no `.*.tmp` left, Dagster's materialized completions/answers equal to the files on disk and to
every shard, no process of the trial left, no run left unfinished. Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the shared harness and its helpers

import fault_harness as fh  # noqa: E402

from llm_infer_dagster.testing.tiny_model import build_tiny_model  # noqa: E402

CHECKED = {
    "sigkill": "exactness after resume; integrity right after the kill; no process outlives the kill",
    "worker kill": "exit 1; only the killed worker's in-flight shards fail; every completed shard answered; "
    "last line names them and the cause; next run exact",
    "two concurrent": "both exit 0; no shard materialized twice (completions, answers); exact",
    "disk full": "nonzero exit; one `llm-infer: error` line, no traceback; no corrupt/half-written shard; "
    "resume exact after freeing space",
}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _outcome_kind(t: fh.Trial) -> str:
    """The outcome without its numbers, to count alike trials together."""
    if t.case == "sigkill":
        return t.outcome.split(" (")[0]
    if t.case == "two concurrent":
        return "split between both runs" if t.details.get("runs_sharing") == 2 else "one run did all"
    if t.case == "worker kill":
        return f"{t.details.get('failed', '?')} shard(s) failed, then exact"
    if t.case == "disk full":
        return t.outcome.split(";")[0].split(",")[0] + (" + extra stderr lines" if t.warnings else "")
    return t.outcome


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sigkill", type=int, default=20, help="random SIGKILL trials")
    p.add_argument("--worker-kill", type=int, default=2, help="engine worker kill trials")
    p.add_argument("--concurrent", type=int, default=3, help="two-concurrent-runs trials")
    p.add_argument("--disk-full", type=int, default=2, help="disk-full trials (tmpfs; needs root)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--files", type=int, default=3)
    p.add_argument("--rows", type=int, default=100, help="rows per input file")
    p.add_argument("--shard-size", type=int, default=20)
    p.add_argument("--work-dir", type=Path, default=None, help="default: a new folder under the temp dir")
    p.add_argument("--keep", action="store_true", help="keep every trial's folder (else only failed ones)")
    a = p.parse_args()

    rng = random.Random(a.seed)
    work = a.work_dir or Path(tempfile.mkdtemp(prefix="llm-infer-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    model = str(build_tiny_model(work / "tiny-llama"))
    size = {"files": a.files, "rows_per_file": a.rows, "shard_size": a.shard_size}
    started, t_start = datetime.datetime.now(datetime.UTC), time.monotonic()
    trials: list[fh.Trial] = []
    counter = 0

    def new_job(**extra: object) -> fh.Job:
        nonlocal counter
        counter += 1
        root = work / f"trial-{counter:03d}"
        root.mkdir()
        return fh.Job(model, root, **{**size, **extra})  # type: ignore[arg-type]

    def record(job: fh.Job, run: object) -> None:
        try:
            t = run()  # type: ignore[operator]
        except Exception as exc:  # the harness itself broke: a problem of the trial, with where
            t = fh.Trial("?", outcome="harness error", problems=[f"{type(exc).__name__}: {exc}"])
            t.details["trace"] = traceback.format_exc()
        trials.append(t)
        print(f"{len(trials):3d} {t.seconds:6.1f} s  {t.line()}", file=sys.stderr, flush=True)
        if t.ok and not a.keep:
            shutil.rmtree(job.root, ignore_errors=True)

    calib = new_job()
    full_run_s, calib_problems = fh.calibrate(calib)
    calib_s = full_run_s
    print(f"uninterrupted run: {full_run_s:.1f} s, problems: {calib_problems or 'none'}", file=sys.stderr)

    for _ in range(a.sigkill):
        job = new_job()
        record(job, lambda job=job, s=full_run_s: fh.sigkill_trial(job, rng, s))
        # The box got quieter than during the calibration run: draw later kill moments over the shorter run.
        full_run_s = min(full_run_s, trials[-1].details.get("finished_in_s", full_run_s))
    for _ in range(a.worker_kill):
        job = new_job(workers=2)
        record(job, lambda job=job: fh.worker_kill_trial(job, rng))
    for _ in range(a.concurrent):
        job = new_job()
        record(job, lambda job=job: fh.concurrent_trial(job, rng))
    disk_skipped = ""
    for _ in range(a.disk_full):
        job = new_job()
        out = job.root / "out"
        if why := fh.mount_tmpfs(out, "32m"):
            disk_skipped = why
            break
        job.out = out
        after, leave = rng.randint(1, 4), rng.choice([0, 64 << 10, 512 << 10])

        def disk(job: fh.Job = job, after: int = after, leave: int = leave, out: Path = out) -> fh.Trial:
            try:
                return fh.disk_full_trial(job, after_shards=after, leave=leave)
            finally:
                fh.umount(out)

        record(job, disk)

    wall = time.monotonic() - t_start
    by_case: dict[str, list[fh.Trial]] = {}
    for t in trials:
        by_case.setdefault(t.case, []).append(t)
    summary = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
        "rows": a.files * a.rows,
        "shards": a.files * -(-a.rows // a.shard_size),
        "uninterrupted_run_s": round(calib_s, 1),
        "kill_window_s": round(full_run_s, 1),  # what the last time-drawn kills were drawn over
        "uninterrupted_problems": calib_problems,
        "wall_s": round(wall, 1),
        "disk_full_skipped": disk_skipped or None,
        "cases": {
            case: {
                "trials": len(ts),
                "ok": sum(t.ok for t in ts),
                "outcomes": dict(Counter(_outcome_kind(t) for t in ts)),
                "problems": [p for t in ts for p in t.problems],
                "warnings": [w for t in ts for w in t.warnings],
                "mean_s": round(sum(t.seconds for t in ts) / len(ts), 1),
            }
            for case, ts in by_case.items()
        },
        "trials": [
            {
                "case": t.case,
                "params": t.params,
                "outcome": t.outcome,
                "ok": t.ok,
                "s": round(t.seconds, 1),
                "problems": t.problems,
                "warnings": t.warnings,
            }
            for t in trials
        ],  # fmt: skip
    }
    print(json.dumps(summary))
    print()
    print(f"Fault trials, {summary['date']}; {summary['nproc']} vCPU {summary['cpu']}; `{summary['command']}`; "
          f"{summary['rows']} rows in {summary['shards']} shards; uninterrupted run {calib_s:.1f} s; "
          f"wall {wall / 60:.1f} min")  # fmt: skip
    print()
    print("| case | trials | exact / ok | outcomes | problems | mean s/trial | checked |")
    print("|---|---|---|---|---|---|---|")
    for case, c in summary["cases"].items():
        outcomes = "; ".join(f"{k}: {n}" for k, n in sorted(c["outcomes"].items(), key=lambda kv: -kv[1]))
        found = c["problems"] + [f"(warning) {w}" for w in c["warnings"]]
        shown = "; ".join(x.replace("|", "/")[:200] for x in found[:3]) + (
            f" (+{len(found) - 3})" if len(found) > 3 else ""
        )
        print(f"| {case} | {c['trials']} | {c['ok']}/{c['trials']} | {outcomes} | {shown or 'none'} | "
              f"{c['mean_s']} | {CHECKED.get(case, '')} |")  # fmt: skip
    if disk_skipped:
        print(f"\ndisk full: skipped ({disk_skipped})")
    if not a.keep:
        shutil.rmtree(work / "tiny-llama", ignore_errors=True)
        shutil.rmtree(calib.root, ignore_errors=True)
    failed = [t for t in trials if not t.ok] + ([calib] if calib_problems else [])
    if failed:
        print(f"\n{len(failed)} trial(s) with problems; their folders are kept under {work}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
