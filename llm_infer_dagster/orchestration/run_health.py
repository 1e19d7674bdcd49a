"""Runs whose process was killed: find them by the process tags on the run, and report them failed.

A run that ``llm-infer`` executes with ``dagster.execute_job`` lives in the ``llm-infer`` process; one that the
UI or the daemon launches through Dagster's ``DefaultRunLauncher`` lives in a ``dagster api execute_run``
process. SIGKILL either and nothing writes the run's end: it stays STARTED for ever, and the missing-shards
schedule (which waits while a run of its task is active) never fires again. The DefaultRunLauncher has no
run-worker health check, so Dagster's run monitoring cannot see this either.

So the process that orchestrates a run tags the run with where it runs (:func:`process_tags`): host, pid, and
the pid's start time (plus the boot id and pid namespace), so a pid reused after the death is no alibi.
``llm-infer`` passes them to ``execute_job`` (they then cover the run from its creation, which can take minutes
of planned-materialization events), and the GPU executor writes them again when it starts orchestrating (they
then cover runs launched from the UI or the daemon too). :func:`mark_dead_runs_failed` reads them back: a run
of this host whose process is gone gets a RUN_FAILURE event saying so.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any, Literal

HOST_TAG = "llm_infer/host"
PID_TAG = "llm_infer/pid"
PROCESS_TAG = "llm_infer/pid_started"  # "boot:<boot id> ns:<pid namespace> ticks:<start>" (or "ctime:<t>")
RUN_TAG = "llm_infer/pid_run"  # the run the executor wrote the tags for (absent on tags given at creation)
PARENT_RUN_TAG = "dagster/parent_run_id"

Liveness = Literal["alive", "dead", "unknown"]

log = logging.getLogger(__name__)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _boot_id() -> str | None:
    return _read("/proc/sys/kernel/random/boot_id")


def _pid_namespace(pid: int | str = "self") -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid").removeprefix("pid:[").removesuffix("]")
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) from ``/proc/<pid>/stat``; None if there is no such pid."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name, in parentheses, may hold spaces
    return fields[0], fields[19]  # fields 3 (state) and 22 (starttime) of proc(5)


def _psutil_create_time(pid: int) -> float | None:
    try:
        import psutil  # only where /proc is missing (macOS); it is a dev dependency, not a required one
    except ImportError:
        return None
    try:
        return float(psutil.Process(pid).create_time())
    except Exception:  # NoSuchProcess, AccessDenied
        return None


def _start_marker(pid: int) -> str:
    if os.path.exists("/proc/self/stat"):
        stat = _proc_stat(pid)
        parts = [f"boot:{_boot_id() or '?'}", f"ns:{_pid_namespace() or '?'}"]
        return " ".join([*parts, f"ticks:{stat[1]}"]) if stat else " ".join(parts)
    ctime = _psutil_create_time(pid)
    return f"ctime:{ctime:.2f}" if ctime is not None else ""


def process_tags(run_id: str | None = None) -> dict[str, str]:
    """Tags saying which process orchestrates a run: this one. ``run_id`` once the run exists (the executor).

    Without ``run_id`` (``llm-infer`` passing them to ``execute_job``, before the run exists) they are trusted
    only on runs that are not re-executions, as a re-execution may have copied its parent's tags.
    """
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), PROCESS_TAG: _start_marker(os.getpid())}
    return {**tags, RUN_TAG: run_id} if run_id else tags


def _marker_fields(marker: str) -> dict[str, str]:
    return dict(part.split(":", 1) for part in marker.split() if ":" in part)


def process_liveness(tags: Mapping[str, str], run_id: str | None = None) -> Liveness:
    """Whether the process the tags name is still running: ``unknown`` when this host cannot tell.

    ``unknown``: no (or malformed) tags, another host or pid namespace, or tags written for another run.
    ``dead``: no such pid, a zombie, a pid now held by a process started at another time, or a reboot since.
    """
    pid_s, host = tags.get(PID_TAG, ""), tags.get(HOST_TAG)
    if not pid_s.isdigit() or host != socket.gethostname():
        return "unknown"
    if run_id is not None and tags.get(RUN_TAG, run_id) != run_id:
        return "unknown"  # copied from another run (a re-execution with its parent's tags)
    if run_id is not None and RUN_TAG not in tags and tags.get(PARENT_RUN_TAG):
        return "unknown"  # creation-time tags on a re-execution: maybe its parent's
    pid, marker = int(pid_s), _marker_fields(tags.get(PROCESS_TAG, ""))
    ns = _pid_namespace()
    if marker.get("ns", "?") != "?" and ns is not None and marker["ns"] != ns:
        return "unknown"  # same host name, another container: its pids are not ours to look up
    boot = _boot_id()
    if marker.get("boot", "?") != "?" and boot is not None and marker["boot"] != boot:
        return "dead"  # the machine restarted since
    if os.path.exists("/proc/self/stat"):
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return "dead"
        return "dead" if "ticks" in marker and marker["ticks"] != stat[1] else "alive"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        pass  # some other user's process holds the pid: the start time below tells
    ctime = _psutil_create_time(pid)
    if "ctime" in marker and ctime is not None and abs(float(marker["ctime"]) - ctime) > 1.0:
        return "dead"
    return "alive"


def mark_dead_runs_failed(instance: Any, belongs: Callable[[Any], bool] | None = None) -> list[str]:
    """Report every unfinished run of this host whose orchestrating process is gone as failed; their ids.

    ``belongs(run)`` narrows the runs looked at (a task's runs). NOT_STARTED, STARTING and STARTED runs get a
    RUN_FAILURE event (reason UNEXPECTED_TERMINATION, so Dagster's run retries may retry them); CANCELING ones
    a RUN_CANCELED event, which their dead process would have written. QUEUED runs are the run queue's.
    Runs without the tags (launched by Dagster before the executor started) are left to Dagster.
    """
    from dagster import DagsterRunStatus, RunsFilter

    from llm_infer_dagster.orchestration.dagster_internals.private import JobFailureData, RunFailureReason

    statuses = [
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
        DagsterRunStatus.CANCELING,
    ]
    runs = instance.get_runs(RunsFilter(statuses=statuses, tags={HOST_TAG: socket.gethostname()}))
    marked: list[str] = []
    for run in runs:
        if (belongs is not None and not belongs(run)) or process_liveness(run.tags, run.run_id) != "dead":
            continue
        current = instance.get_run_by_id(run.run_id)  # read after the death: nothing will change it now
        if current is None or current.is_finished:
            continue
        msg = (
            f"The process running this run (pid {run.tags[PID_TAG]} on {run.tags[HOST_TAG]}) is gone (killed, or "
            "its machine restarted) without recording how the run ended; marked "
            f"{'canceled' if current.status == DagsterRunStatus.CANCELING else 'failed'} by llm-infer's dead-run check."
        )
        if current.status == DagsterRunStatus.CANCELING:
            instance.report_run_canceled(current, msg)
        else:
            failure = JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION)
            instance.report_run_failed(current, msg, job_failure_data=failure)
        log.warning("run %s: %s", run.run_id, msg)
        marked.append(run.run_id)
    return marked
