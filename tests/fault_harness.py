"""Fault trials of ``llm-infer`` (issue 13), shared by ``tests/orchestration/test_fault_trials.py`` (sized for CI) and
``benchmarks/faults.py`` (full size, figures).

Each trial runs the real command (``python -m llm_infer_dagster``) on the example task ``qa_regex`` with the real
HF engine on the tiny model, on a fresh output dir, breaks it in one way, runs the same command again and checks
that the result is exact (:func:`check_exact`). A trial returns a :class:`Trial`: what happened and every problem
found; the test asserts there are none, the benchmark counts them.

Every process a trial starts carries ``FAULT_TRIAL_MARKER=<id>`` in its environment (the workers inherit it), so
the trial finds its own engine workers, and what is left of them, among the processes of other runs on the box.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import psutil
from dagster import AssetKey, DagsterRunStatus
from tests_support import CONFIGS, REPO, cli_env, instance_at, write_qa_input

TASK = "qa_regex"
MARKER_ENV = "FAULT_TRIAL_MARKER"
WORKER_MODULE = "llm_infer_dagster.runtime.worker"
UNFINISHED = {DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED}


# -- one job: a task, its input, an output dir ------------------------------------------------------------------


@dataclass
class Job:
    model: str
    root: Path  # the trial's folder: data/, out/, logs of each command
    files: int = 3
    rows_per_file: int = 100
    shard_size: int = 20
    workers: int = 1
    batch_size: int = 32
    out: Path | None = None  # default root/out
    marker: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    commands: int = 0

    def __post_init__(self) -> None:
        self.data = self.root / "data"
        self.out = self.out or self.root / "out"
        if not self.data.exists():
            write_qa_input(self.data, files=self.files, rows=self.rows_per_file)

    @property
    def rows(self) -> int:
        return self.files * self.rows_per_file

    @property
    def shards(self) -> int:
        return self.files * -(-self.rows_per_file // self.shard_size)

    def args(self) -> list[str]:
        return [
            "--model_path", self.model, "--model_type", "hf", "--use_cpu", "--output_path", str(self.out),
            "--task_name", TASK, "--config_path", str(CONFIGS), "--input_path", str(self.data),
            "--shard_size", str(self.shard_size), "--workers", str(self.workers),
            "--batch_size", str(self.batch_size), "--no_progress",
        ]  # fmt: skip

    def start(self) -> Command:
        """Start ``llm-infer`` as its own process group (so the whole group can be killed at once)."""
        self.commands += 1
        n = self.commands
        stdout, stderr = self.root / f"cmd-{n}.stdout", self.root / f"cmd-{n}.stderr"
        with stdout.open("wb") as so, stderr.open("wb") as se:
            proc = subprocess.Popen(
                [sys.executable, "-m", "llm_infer_dagster", *self.args()],
                cwd=REPO, env=cli_env(**{MARKER_ENV: self.marker}), stdout=so, stderr=se,
                start_new_session=True,
            )  # fmt: skip
        return Command(proc, stdout, stderr, time.monotonic())

    def run(self, timeout: float = 600) -> Command:
        cmd = self.start()
        cmd.wait(timeout)
        return cmd

    def dir(self, asset: str) -> Path:
        assert self.out is not None
        return self.out / TASK / asset

    def on_disk(self, asset: str) -> set[str]:
        return {p.stem for p in self.dir(asset).glob("*.parquet")} if self.dir(asset).exists() else set()


@dataclass
class Command:
    proc: subprocess.Popen
    stdout_path: Path
    stderr_path: Path
    started: float
    killed_at: float | None = None

    @property
    def rc(self) -> int | None:
        return self.proc.returncode

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def last_line(self) -> str:
        lines = [ln for ln in self.stdout.splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise

    def kill_group(self) -> None:
        """SIGKILL the command's whole process group: the CLI and its step processes (workers lead their own)."""
        self.killed_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def elapsed(self) -> float:
        return time.monotonic() - self.started


# -- processes ---------------------------------------------------------------------------------------------------


def marked_processes(marker: str) -> dict[int, str]:
    """pid -> command line of every live process carrying ``marker`` in its environment (zombies left out)."""
    found: dict[int, str] = {}
    needle = f"{MARKER_ENV}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            found[int(entry.name)] = cmdline
    return found


def engine_workers(marker: str) -> dict[int, int]:
    """pid -> worker index of the job's live engine worker processes (the index from its log file name)."""
    workers: dict[int, int] = {}
    for pid, cmdline in marked_processes(marker).items():
        if WORKER_MODULE not in cmdline:
            continue
        try:
            log = os.readlink(f"/proc/{pid}/fd/1")  # the pool points its stdout at logs/workers/<run>/worker-<i>.log
            workers[pid] = int(Path(log).stem.rsplit("-", 1)[1])
        except (OSError, ValueError, IndexError):
            continue
    return workers


LOADED_RE = re.compile(r"worker (\d+): model loaded in [\d.]+ s \(pid (\d+)\)")


def loaded_workers(instance: Any) -> dict[int, int]:
    """pid -> worker index of the engine workers the latest run's step reported loaded (its Dagster log)."""
    runs = instance.get_runs(limit=1)
    found: dict[int, int] = {}
    for entry in instance.all_logs(runs[0].run_id) if runs else []:
        if m := LOADED_RE.search(entry.user_message or ""):
            found[int(m.group(2))] = int(m.group(1))
    return found


def leftover_processes(marker: str, grace: float = 10.0) -> dict[int, str]:
    """The job's processes still alive ``grace`` seconds after its command ended (then killed, to clean up)."""
    deadline = time.monotonic() + grace
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


# -- checks ------------------------------------------------------------------------------------------------------


EXACT_CHECKS = (
    "N unique record_ids in answers Parquet",
    "N unique record_ids in results/extract JSON",
    "every Parquet readable",
    "no .*.tmp left",
    "Dagster's materialized completions/answers = files on disk = every shard",
    "no process of the job left",
    "no run left unfinished",
)


def readable_parquet(out: Path) -> tuple[int, list[str]]:
    """(Parquet files under ``out``, problems: those that do not read)."""
    problems, n = [], 0
    for p in sorted(out.rglob("*.parquet")):
        n += 1
        try:
            pl.read_parquet(p)
        except Exception as exc:
            problems.append(f"unreadable Parquet {p.relative_to(out)}: {type(exc).__name__}: {exc}")
    return n, problems


def temp_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*.tmp"))


def _sweepable(name: str) -> bool:
    """``.<name>.<host>.<pid>.<random>.tmp`` of a process that is gone."""
    parts = name.rsplit(".", 4)
    return len(parts) == 5 and parts[2].isdigit() and not psutil.pid_exists(int(parts[2]))


def integrity(job: Job, crashed: bool = False) -> list[str]:
    """What must hold at any moment, even right after a crash: readable shards, and Dagster never records a
    shard whose file is not there. Temp files: none after a run that ended; right after a SIGKILL (``crashed``)
    only the temps of writers that are gone, named so the next run sweeps them (``storage.sweep_stale_temps``)."""
    assert job.out is not None
    _, problems = readable_parquet(job.out)
    tmp = temp_files(job.out)
    if crashed:
        tmp = [t for t in tmp if not _sweepable(Path(t).name)]
    if tmp:
        problems.append(f"temp files left: {tmp[:5]}")
    if (job.out / ".dagster").exists():
        inst = instance_at(job.out)
        for asset in ("completions", "answers"):
            recorded = inst.get_materialized_partitions(AssetKey([TASK, asset]))
            if missing := recorded - job.on_disk(asset):
                problems.append(
                    f"{asset}: {len(missing)} shard(s) recorded in Dagster without a file: {sorted(missing)[:3]}"
                )
    return problems


def check_exact(job: Job) -> list[str]:
    """Everything :data:`EXACT_CHECKS` says, after a command that should have finished the job; the problems."""
    assert job.out is not None
    problems = integrity(job)
    answers_files = sorted(job.dir("answers").glob("*.parquet"))
    ids = (
        pl.concat([pl.read_parquet(p, columns=["record_id"]) for p in answers_files])["record_id"]
        if answers_files
        else pl.Series([])
    )
    if ids.len() != job.rows or ids.n_unique() != job.rows:
        problems.append(f"answers Parquet: {ids.len()} rows, {ids.n_unique()} unique record_ids, want {job.rows}")
    extract = job.out / "results" / "extract"
    records: list[Any] = []
    for f in sorted(extract.glob("*.json")) if extract.exists() else []:
        try:
            records += json.loads(f.read_text())
        except ValueError as exc:
            problems.append(f"unreadable {f.name}: {exc}")
    rids = [r.get("record_id") for r in records]
    if len(rids) != job.rows or len(set(rids)) != job.rows:
        problems.append(f"results/extract: {len(rids)} records, {len(set(rids))} unique record_ids, want {job.rows}")
    inst = instance_at(job.out)
    keys = set(inst.get_dynamic_partitions(f"{TASK}_shards"))
    if len(keys) != job.shards:
        problems.append(f"{len(keys)} shards registered, want {job.shards}")
    for asset in ("completions", "answers"):
        recorded, disk = inst.get_materialized_partitions(AssetKey([TASK, asset])), job.on_disk(asset)
        if not (recorded == disk == keys):
            problems.append(
                f"{asset}: {len(recorded)} recorded in Dagster, {len(disk)} files, {len(keys)} shards "
                f"(recorded-disk {sorted(recorded - disk)[:3]}, disk-recorded {sorted(disk - recorded)[:3]})"
            )
    if left := leftover_processes(job.marker):
        problems.append(f"{len(left)} process(es) of the job left running: {list(left.values())[:3]}")
    unfinished = [(r.run_id[:8], r.status.value) for r in inst.get_runs() if r.status in UNFINISHED]
    if unfinished:
        problems.append(f"runs left unfinished: {unfinished}")
    return problems


#: What llm-infer writes to stderr itself (its last line names the command that opens the results in the UI).
OWN_STDERR = ("task ", "llm-infer: ", "warning: ", "nothing to do", "report: ", "see them in the Dagster UI: ")


def stderr_noise(cmd: Command) -> list[str]:
    """stderr lines llm-infer did not write itself (a library's messages, a traceback)."""
    return [
        ln for ln in cmd.stderr.splitlines()
        if ln.strip() and not ln.startswith(OWN_STDERR) and "shard(s) to redo" not in ln
    ]  # fmt: skip


def clean_exit(cmd: Command, what: str) -> list[str]:
    problems = []
    if noise := stderr_noise(cmd):
        problems.append(f"{what}: {len(noise)} stderr line(s) not from llm-infer: {noise[:3]}")
    if cmd.rc != 0:
        problems.append(f"{what}: exit code {cmd.rc}; stderr tail: {cmd.stderr[-600:]!r}")
    if "Traceback" in cmd.stderr:
        problems.append(f"{what}: a traceback on stderr: {cmd.stderr[-600:]!r}")
    if "shards done" not in cmd.last_line:
        problems.append(f"{what}: last line is not the summary: {cmd.last_line!r}")
    return problems


# -- trials ------------------------------------------------------------------------------------------------------


@dataclass
class Trial:
    case: str
    params: str = ""
    outcome: str = ""  # what the fault hit / what the first command did
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the contract bent, nothing lost (e.g. extra stderr lines)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        found = self.problems + [f"(warning) {w}" for w in self.warnings]
        return f"{self.case} [{self.params}] {self.outcome}: " + ("; ".join(found) if found else "ok")


def _phase(job: Job, cmd: Command) -> str:
    """Where the job was when it was killed, from what is on disk."""
    assert job.out is not None
    if not (job.out / ".dagster" / "dagster.yaml").exists():
        return "start-up (no instance yet)"
    if not (job.out / TASK / "shards.json").exists():
        return "start-up/registration (instance, no shards)"
    raw, comps, answers = (len(job.on_disk(a)) for a in ("raw", "completions", "answers"))
    if raw == 0:
        return "registration/run start (shards, no raw)"
    if comps == 0:
        return f"engine loading ({raw} raw, no completions)"
    if answers < job.shards:
        return f"mid-run ({comps} completions, {answers} answers of {job.shards})"
    return "after the last shard"


def _wait_for(pred: Any, cmd: Command, timeout: float, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        if not cmd.alive():
            return False
        time.sleep(poll)
    return False


def sigkill_trial(job: Job, rng: random.Random, full_run_s: float) -> Trial:
    """SIGKILL the whole ``llm-infer`` process group at a random moment, then resume with the same command.

    Half the trials kill at a time drawn uniformly over an uninterrupted run (``full_run_s``: start-up,
    registration, engine start, shards), half right after a random number of completions shards has landed
    plus a random fraction of a shard's time (so between and inside the per-shard steps).
    """
    t0 = time.monotonic()
    delay = 0.0
    if rng.random() < 0.5:
        at = rng.uniform(0.0, full_run_s)
        trigger, params = (lambda: cmd.elapsed() >= at), f"at {at:.2f} s"
    else:
        k, delay = rng.randint(1, job.shards - 1), rng.uniform(0.0, full_run_s / job.shards)
        trigger, params = (lambda: len(job.on_disk("completions")) >= k), f"{delay:.2f} s after shard {k}"
    trial = Trial("sigkill", params)
    cmd = job.start()
    if _wait_for(trigger, cmd, timeout=max(120.0, 4 * full_run_s)) and delay:
        time.sleep(delay)
    if cmd.alive():
        trial.outcome = _phase(job, cmd)
        cmd.kill_group()
        left = leftover_processes(job.marker)  # engine workers die with the step (process_tree.py)
        if left:
            trial.problems.append(f"{len(left)} process(es) outlived the SIGKILL: {list(left.values())[:3]}")
    else:
        trial.outcome = f"finished before the kill (exit {cmd.rc})"
        trial.details["finished_in_s"] = cmd.elapsed()  # a whole run took no longer than this
    trial.problems += integrity(job, crashed=True)
    resumed = job.run()
    trial.problems += clean_exit(resumed, "resume")
    trial.details["marked_failed"] = resumed.stderr.count("marked it failed")  # the killed run(s), if created
    trial.problems += check_exact(job)
    trial.seconds = time.monotonic() - t0
    return trial


def worker_kill_trial(job: Job, rng: random.Random | None = None) -> Trial:
    """``--workers 2``: SIGKILL one engine worker after the first completions shard lands."""
    assert job.workers >= 2
    t0 = time.monotonic()
    trial = Trial("worker kill", f"{job.workers} workers, kill a loaded one after the 1st shard")
    cmd = job.start()
    if not _wait_for(lambda: len(job.on_disk("completions")) >= 1, cmd, timeout=300, poll=0.01):
        trial.problems.append(f"no completions shard landed (exit {cmd.rc}): {cmd.stderr[-400:]!r}")
        return trial
    # Only a worker whose model is loaded holds shards: one killed while loading fails nothing (rightly).
    loaded: dict[int, int] = {}
    inst = instance_at(job.out)  # type: ignore[arg-type]

    def all_loaded() -> bool:
        loaded.update(loaded_workers(inst))
        return len(loaded) >= job.workers

    _wait_for(all_loaded, cmd, timeout=120, poll=0.1)
    workers = {pid: i for pid, i in engine_workers(job.marker).items() if pid in loaded}
    if len(workers) < 2:
        trial.problems.append(f"found {len(workers)} loaded engine worker(s), want {job.workers}")
    victim = (rng or random).choice(sorted(workers)) if workers else None
    if victim is not None:
        os.kill(victim, signal.SIGKILL)
        index = workers[victim]
        trial.params += f" (worker {index})"
    cmd.wait(600)
    last = cmd.last_line
    keys = set(inst.get_dynamic_partitions(f"{TASK}_shards"))
    comps = inst.get_materialized_partitions(AssetKey([TASK, "completions"]))
    answers = inst.get_materialized_partitions(AssetKey([TASK, "answers"]))
    failed = sorted(keys - comps)
    trial.outcome = f"exit {cmd.rc}, {len(failed)} shard(s) failed, {len(comps)}/{len(keys)} completed"
    trial.details.update(failed=len(failed), last_line=last)
    # A worker killed while it held no shard (between two, or after its last) costs nothing: the other one
    # carries on and the run succeeds. Otherwise its 1 or 2 in-flight shards fail and the run exits 1.
    idle_kill = cmd.rc == 0 and not failed
    if idle_kill:
        trial.outcome += " (the worker held no shard when killed)"
    elif cmd.rc != 1:
        trial.problems.append(f"exit code {cmd.rc}, want 1")
    if "Traceback" in cmd.stderr:
        trial.problems.append(f"a traceback on stderr: {cmd.stderr[-600:]!r}")
    if not idle_kill and not 1 <= len(failed) <= 2:  # it held up to `prefetch` (2) shards; the other did the rest
        trial.problems.append(f"{len(failed)} shards failed, want the killed worker's 1 or 2")
    if answers != comps:
        trial.problems.append(
            f"answers for {len(answers)} shards, completions for {len(comps)}: not every one answered"
        )
    if victim is not None and not idle_kill:
        cause = f"worker {index} exited with code -9"
        if f"{len(failed)} shard(s) failed: " not in last or cause not in last:
            trial.problems.append(f"the last line does not say {len(failed)} shard(s) failed and '{cause}': {last!r}")
        if not all(k in last for k in failed):
            trial.problems.append(f"the last line does not list the failed shards {failed}: {last!r}")
    trial.problems += integrity(job, crashed=True)  # the killed worker may have been mid-write
    resumed = job.run()
    trial.problems += clean_exit(resumed, "next run")
    if f"{len(keys)}/{len(keys)} shards done" not in resumed.last_line:
        trial.problems.append(f"next run: {resumed.last_line!r}")
    trial.problems += check_exact(job)
    trial.seconds = time.monotonic() - t0
    return trial


def concurrent_trial(job: Job, rng: random.Random) -> Trial:
    """Two ``llm-infer`` on the same task and output dir, the second started a random 0-2 s after the first."""
    t0 = time.monotonic()
    stagger = rng.uniform(0.0, 2.0)
    trial = Trial("two concurrent", f"2nd starts {stagger:.2f} s later")
    first = job.start()
    time.sleep(stagger)
    second = job.start()
    for name, cmd in (("first", first), ("second", second)):
        cmd.wait(600)
        trial.problems += clean_exit(cmd, name)
    inst = instance_at(job.out)  # type: ignore[arg-type]
    by_run: dict[str, int] = Counter()
    for asset in ("completions", "answers"):
        records = inst.fetch_materializations(AssetKey([TASK, asset]), limit=10_000).records
        per_shard = Counter(r.partition_key for r in records)
        if per_shard and max(per_shard.values()) > 1:
            twice = sorted(k for k, n in per_shard.items() if n > 1)
            trial.problems.append(f"{asset}: {len(twice)} shard(s) materialized more than once: {twice[:3]}")
        if asset == "completions":
            by_run = Counter(r.run_id for r in records)
    trial.outcome = "shards per run: " + "/".join(str(n) for n in sorted(by_run.values(), reverse=True))
    trial.details["runs_sharing"] = len(by_run)
    trial.problems += check_exact(job)
    trial.seconds = time.monotonic() - t0
    return trial


# -- disk full ---------------------------------------------------------------------------------------------------


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` at ``path``; None if done, else why it cannot be."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run mount: {exc}"
    return None if r.returncode == 0 else f"mount -t tmpfs failed: {r.stderr.strip() or r.returncode}"


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(path: Path, leave: int = 0) -> int:
    """Write ``path`` until the file system is full (less ``leave`` bytes); the bytes written."""
    written, chunk = 0, b"\0" * 65536
    with path.open("wb", buffering=0) as f:
        while True:
            room = shutil.disk_usage(path.parent).free - leave
            if room <= 0:
                break
            try:
                written += f.write(chunk[: min(len(chunk), room)])
            except OSError:
                break
    return written


def disk_full_trial(job: Job, after_shards: int = 2, leave: int = 0) -> Trial:
    """The output dir is a tmpfs; once ``after_shards`` completions shards exist a ballast file fills it.

    Expect a nonzero exit with one line of error and no traceback, no corrupt or half-written shard; then the
    ballast goes and the same command finishes the job exactly. ``job.out`` must be the mounted tmpfs.
    """
    assert job.out is not None
    t0 = time.monotonic()
    trial = Trial("disk full", f"tmpfs filled after {after_shards} shard(s), {leave} B left")
    ballast = job.out / "ballast"
    cmd = job.start()
    if not _wait_for(lambda: len(job.on_disk("completions")) >= after_shards, cmd, timeout=300, poll=0.01):
        trial.problems.append(
            f"{after_shards} completions shard(s) never landed (exit {cmd.rc}): {cmd.stderr[-400:]!r}"
        )
    filled = fill(ballast, leave)
    try:
        cmd.wait(300)
    except subprocess.TimeoutExpired:
        trial.problems.append("llm-infer did not end within 300 s of the disk filling up (killed)")
    err_lines = [ln for ln in cmd.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in err_lines if ln.startswith("llm-infer: ")]
    done = len(job.on_disk("answers"))
    trial.outcome = f"exit {cmd.rc}, {done}/{job.shards} shards answered; " + (
        errors[-1][:160] if errors else f"last line {cmd.last_line[:160]!r}"
    )
    trial.details.update(filled=filled, stderr=cmd.stderr[-3000:], last_line=cmd.last_line)
    if cmd.rc in (0, None):
        trial.problems.append(f"exit code {cmd.rc}, want nonzero")
    if "Traceback" in cmd.stderr:
        trial.problems.append(f"a traceback on stderr: {cmd.stderr[-800:]!r}")
    if not errors and "shard(s) failed" not in cmd.last_line:
        trial.problems.append(f"no one-line error: stderr tail {err_lines[-3:]}, last line {cmd.last_line!r}")
    if len(errors) > 1:
        trial.problems.append(f"{len(errors)} error lines, want one: {errors}")
    # Not the one line promised, but the shards are safe: kept apart so a test can tell the two kinds apart.
    trial.warnings += (
        [f"{len(noise)} stderr line(s) besides llm-infer's own: {noise[:2]}"] if (noise := stderr_noise(cmd)) else []
    )
    ballast.unlink(missing_ok=True)  # first: sqlite cannot even read the instance on a full disk
    trial.problems += integrity(job)
    if (job.out / ".dagster").exists():  # how the failed run was left (the next llm-infer marks a dead one failed)
        trial.details["runs_after_failure"] = dict(Counter(r.status.value for r in instance_at(job.out).get_runs()))
    resumed = job.run()
    trial.problems += clean_exit(resumed, "resume after freeing space")
    trial.problems += check_exact(job)
    trial.seconds = time.monotonic() - t0
    return trial


def calibrate(job: Job) -> tuple[float, list[str]]:
    """An uninterrupted run: its wall time (to draw kill moments from) and any problem with its result."""
    cmd = job.run()
    seconds = cmd.elapsed()
    return seconds, clean_exit(cmd, "uninterrupted run") + check_exact(job)
