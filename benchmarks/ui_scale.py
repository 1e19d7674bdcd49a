"""Does the Dagster UI stay usable at thousands of shards? Page loads and "Materialize all missing" in Chromium.

    apt-get install chromium && pip install playwright     # Debian's browser; `playwright install` is never run
    python benchmarks/ui_scale.py --output OUT --configs CONFIGS --task bench --model MODEL \
        [--input INPUT] [--port 3391] [--shots DIR] [--graphql-log FILE] [--replay 3] [--env K=V ...]
    python benchmarks/ui_scale.py --output FRESH --configs CONFIGS --task bench --model MODEL --input INPUT \
        --materialize                                       # FRESH: registered (`llm-infer --plan_only`), nothing run

OUT is an `llm-infer` output dir (e.g. one `scale.py --full-run` left, 2,000 shards). This starts
`dagster dev` on 127.0.0.1 against OUT's instance with the same settings the run had, then opens, in Debian's
Chromium driven by Playwright (`executable_path`, nothing downloaded), the task's asset group, the completions
asset and its Partitions tab, timing each from navigation until the page shows the materialization status a
person looks for (graph: every asset's status icon in the sidebar, the nodes coloured; overview: the Status
panel's "Latest materialization" tag; partitions: "Materialized (N)"), and saves screenshots.

Every GraphQL request the pages make is recorded (operation name, start, duration, response size;
``--graphql-log`` writes them all), and ``--replay N`` times each distinct query of the pages again directly
against ``/graphql`` (median of N), so a slow query shows by name. ``--env K=V`` passes extra variables to
the webserver, daemon and code server (to try a setting). ``--stacks FILE`` samples the stacks of every process
of ``dagster dev`` with py-spy (``PY_SPY``, default ``py-spy``) every 2 s while the pages load.

``--materialize`` instead clicks the group graph's "Materialize all", picks "Missing" in the launch dialog and
"Launch backfill", and times: the dialog, the launch mutation, the backfill's first run being created and that
run being STARTED (the daemon's backfill and run-queue loops). It counts the backfill's runs (single_run
backfill policy: one run for every shard), then cancels the backfill and terminates the run, and waits for
the run to end. OUT should have shards registered and none materialized; it is changed (a canceled run).

It stops every process it started (the process group of ``dagster dev``, then any process left with OUT's
DAGSTER_HOME in its environment, e.g. a run worker).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Dagster's relative times (dayjs fromNow), as the Status panel's latest-materialization tag shows them.
RELATIVE_TIME = (
    r"/^(a few seconds|an? (minute|hour|day|month|year)|\d+ (seconds|minutes|hours|days|months|years)) ago$/"
)
STATUS_ICONS = ("run_success", "missing", "run_failed", "run_started", "partial", "run_queued")


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def graphql(
    base: str, query: str, variables: dict | None = None, op: str | None = None, timeout: float = 300
) -> tuple[dict, int]:
    body = json.dumps({"query": query, "variables": variables or {}, "operationName": op}).encode()
    req = urllib.request.Request(base + "/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
    return json.loads(raw), len(raw)


class GraphqlRecorder:
    """Every GraphQL POST of a Playwright page: operation, page, start, duration, response size."""

    def __init__(self, page: Any) -> None:
        self.t0 = time.perf_counter()
        self.page_name = "?"
        self.pending: dict[int, tuple[float, dict, str]] = {}
        self.done: list[dict[str, Any]] = []
        page.on("request", self._start)
        page.on("requestfinished", lambda r: self._end(r, failed=False))
        page.on("requestfailed", lambda r: self._end(r, failed=True))

    def _start(self, r: Any) -> None:
        if r.method == "POST" and urllib.parse.urlsplit(r.url).path.endswith("/graphql"):
            try:
                body = json.loads(r.post_data or "{}")
            except ValueError:
                body = {}
            self.pending[id(r)] = (time.perf_counter(), body, self.page_name)

    def _end(self, r: Any, failed: bool) -> None:
        if id(r) not in self.pending:
            return
        t, body, page_name = self.pending.pop(id(r))
        # The sync API delivers events only while Python is inside a Playwright call: time from the browser's
        # own request timing, not from when this callback ran.
        seconds = time.perf_counter() - t
        with contextlib.suppress(Exception):
            if r.timing["responseEnd"] >= 0:
                seconds = r.timing["responseEnd"] / 1000
        size = None
        if not failed:
            try:
                size = r.sizes()["responseBodySize"]
            except Exception:  # noqa: BLE001 - sizes are a nicety
                size = None
        self.done.append({
            "page": page_name, "op": body.get("operationName"), "start_s": round(t - self.t0, 3),
            "seconds": round(seconds, 3), "bytes": size, "failed": failed,
            "query": body.get("query"), "variables": body.get("variables"),
        })  # fmt: skip

    def unfinished(self) -> list[dict[str, Any]]:
        now = time.perf_counter()
        return [
            {"page": p, "op": b.get("operationName"), "start_s": round(t - self.t0, 3), "seconds": None,
             "pending_for_s": round(now - t, 1)}
            for t, b, p in self.pending.values()
        ]  # fmt: skip

    def slowest(self, page_name: str, n: int = 4) -> list[str]:
        rows = sorted((r for r in self.done if r["page"] == page_name), key=lambda r: -r["seconds"])
        return [f"{r['op']} {r['seconds']} s" for r in rows[:n]]


class StackSampler:
    """py-spy dumps of every process in a process group, every ``every`` s, appended to one file."""

    def __init__(self, pgid: int, path: Path, py_spy: str, every: float = 2.0) -> None:
        self.pgid, self.path, self.py_spy, self.every = pgid, path, py_spy, every
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StackSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()

    def _run(self) -> None:
        with open(self.path, "a") as f:
            while not self.stop_event.wait(self.every):
                for pid in pids_in_group(self.pgid):
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    if "python" not in cmd:
                        continue
                    dump = subprocess.run([self.py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True)
                    f.write(f"==== t={time.time():.1f} pid={pid} {cmd[:200]}\n{dump.stdout}{dump.stderr}\n")
                f.flush()


def pids_in_group(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getpgid(int(d.name)) == pgid:
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def pids_with_home(home: str) -> list[int]:
    """Processes (of this user) whose environment has DAGSTER_HOME=home: what a run left behind."""
    needle = f"DAGSTER_HOME={home}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def skip_nux(page: Any) -> None:
    """Dismiss the "Join the Dagster community" modal if it is up (it would take the clicks)."""
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        with contextlib.suppress(Exception):  # it went away by itself
            skip.first.click(timeout=2_000)


def time_pages(page: Any, base: str, task: str, rec: GraphqlRecorder, shots: Path, wait_s: float) -> dict[str, float]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    icons = ", ".join(f'[role=img][aria-label="{i}"]' for i in STATUS_ICONS)
    pages = {
        # Ready when a materialization status is drawn, not just the page frame. The graph at this size draws
        # minimal nodes (name + status colour, no text); the sidebar shows one status icon per asset.
        "asset group graph": (f"/asset-groups/{task}", lambda: page.locator(icons).nth(4).wait_for(
            timeout=wait_s * 1000)),
        "completions asset": (f"/assets/{task}/completions", lambda: page.locator(
            f"text={RELATIVE_TIME}").first.wait_for(timeout=wait_s * 1000)),
        "completions partitions": (f"/assets/{task}/completions?view=partitions", lambda: page.wait_for_selector(
            "text=/Materialized \\(\\d+\\)/", timeout=wait_s * 1000)),
    }  # fmt: skip
    times: dict[str, float] = {}
    for name, (path, ready) in pages.items():
        rec.page_name = name
        t0 = time.perf_counter()
        page.goto(base + path, wait_until="domcontentloaded", timeout=120_000)
        try:
            ready()
            times[name] = round(time.perf_counter() - t0, 2)
            page.wait_for_load_state("networkidle", timeout=wait_s * 1000)
        except PlaywrightTimeout:
            times.setdefault(name, -1.0)  # what a person looks for did not appear within wait_s
        page.wait_for_timeout(1_000)
        skip_nux(page)  # the community modal would cover the screenshot
        page.screenshot(path=str(shots / f"{name.replace(' ', '_')}.png"))
        print(f"{name}: {times[name]} s (-1: not shown within {wait_s:g} s); slowest requests: "
              f"{', '.join(rec.slowest(name))}", flush=True)  # fmt: skip
    return times


def replay(base: str, rec: GraphqlRecorder, n: int) -> list[dict[str, Any]]:
    """Each distinct query the pages made, again n times straight at /graphql: median seconds and bytes."""
    seen: dict[str, dict[str, Any]] = {}
    for r in rec.done:
        if r["query"] and r["page"] != "materialize":
            seen.setdefault(json.dumps([r["op"], r["query"], r["variables"]], sort_keys=True), r)
    out = []
    for r in seen.values():
        secs, size, errors = [], 0, None
        for _ in range(n):
            t0 = time.perf_counter()
            data, size = graphql(base, r["query"], r["variables"], r["op"])
            secs.append(time.perf_counter() - t0)
            errors = errors or data.get("errors")
        vars_short = json.dumps(r["variables"])[:80]
        out.append({"op": r["op"], "variables": vars_short, "median_s": round(statistics.median(secs), 3),
                    "bytes": size, "errors": bool(errors)})  # fmt: skip
    out.sort(key=lambda x: -x["median_s"])
    for x in out:
        print(f"replay {x['op']:<40} {x['median_s']:>7} s {x['bytes']:>9} B {x['variables']}", flush=True)
    return out


BACKFILLS = """query UiScaleBackfills { partitionBackfillsOrError(limit: 5) { __typename
  ... on PartitionBackfills { results { id status numPartitions timestamp
    runs { id status tags { key value } } } } } }"""
RUN = "query UiScaleRun($id: ID!) { runOrError(runId: $id) { ... on Run { id status startTime endTime } } }"
CANCEL = """mutation UiScaleCancel($id: String!) { cancelPartitionBackfill(backfillId: $id) { __typename
  ... on PythonError { message } } }"""
TERMINATE = """mutation UiScaleTerminate($id: String!) { terminateRun(runId: $id, terminatePolicy: SAFE_TERMINATE) {
  __typename ... on PythonError { message } } }"""


def backfills(base: str) -> list[dict[str, Any]]:
    data, _ = graphql(base, BACKFILLS, op="UiScaleBackfills")
    return data["data"]["partitionBackfillsOrError"].get("results") or []


def materialize_missing(page: Any, base: str, task: str, rec: GraphqlRecorder, shots: Path, wait_s: float) -> dict:
    """Graph -> "Materialize all" -> Missing -> Launch backfill; times up to the run STARTED; then cancels."""
    res: dict[str, Any] = {}
    before = {b["id"] for b in backfills(base)}
    rec.page_name = "materialize"
    page.goto(base + f"/asset-groups/{task}", wait_until="domcontentloaded", timeout=120_000)
    icons = ", ".join(f'[role=img][aria-label="{i}"]' for i in STATUS_ICONS)
    page.locator(icons).nth(4).wait_for(timeout=wait_s * 1000)  # (a string wait_for_function: blocked by the CSP)
    page.wait_for_load_state("networkidle", timeout=wait_s * 1000)
    skip_nux(page)
    t_click = time.perf_counter()
    page.get_by_role("button", name=re.compile(r"Materialize all")).first.click()
    dialog = page.get_by_role("dialog").last
    dialog.get_by_role("button", name="Missing", exact=True).wait_for(timeout=wait_s * 1000)
    res["dialog_s"] = round(time.perf_counter() - t_click, 2)
    dialog.get_by_role("button", name="Missing", exact=True).click()
    count = dialog.get_by_text(re.compile(r"^[\d,]+ partitions?$")).first
    dialog.get_by_text(re.compile(r"^[1-9][\d,]* partitions?$")).first.wait_for(timeout=wait_s * 1000)
    res["dialog_missing_s"] = round(time.perf_counter() - t_click, 2)
    res["partitions_selected"] = count.inner_text()
    page.screenshot(path=str(shots / "materialize_dialog.png"))
    launch = dialog.get_by_role("button", name=re.compile(r"Launch (backfill|run)"))
    res["launch_button"] = launch.first.inner_text()
    t_launch = time.perf_counter()
    launch.first.click()
    bf: dict[str, Any] | None = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # the mutation's backfill, then its first run, then that run started
        new = [b for b in backfills(base) if b["id"] not in before]
        if new:
            bf = new[0]
            res.setdefault("backfill_created_s", round(time.perf_counter() - t_launch, 2))
            res["backfill_partitions"] = bf["numPartitions"]
            if bf["runs"]:
                res.setdefault("first_run_created_s", round(time.perf_counter() - t_launch, 2))
                statuses = {r["status"] for r in bf["runs"]}
                if statuses & {"STARTED", "SUCCESS", "FAILURE", "CANCELED"}:
                    res["first_run_started_s"] = round(time.perf_counter() - t_launch, 2)
                    break
        page.wait_for_timeout(500)  # (not time.sleep: Playwright's events are delivered only inside its calls)
    page.wait_for_timeout(1_000)
    page.screenshot(path=str(shots / "materialize_launched.png"))
    res["click_to_first_run_started_s"] = (
        round(res["first_run_started_s"] + (t_launch - t_click), 2) if "first_run_started_s" in res else None
    )
    if bf is None:
        res["error"] = "no backfill within 300 s"
        return res
    # Let the daemon tick once more (it would submit further runs now), then count, then stop everything.
    time.sleep(float(os.environ.get("UI_SCALE_SETTLE_S", "35")))
    bf = next(b for b in backfills(base) if b["id"] == bf["id"])
    res["backfill_id"], res["backfill_status"] = bf["id"], bf["status"]
    res["runs"] = len(bf["runs"])
    tags = {t["key"]: t["value"] for t in bf["runs"][0]["tags"]} if bf["runs"] else {}
    res["run_partition_range"] = [tags.get("dagster/asset_partition_range_start"),
                                  tags.get("dagster/asset_partition_range_end")]  # fmt: skip
    res["run_statuses"] = sorted(r["status"] for r in bf["runs"])
    t_cancel = time.perf_counter()
    graphql(base, CANCEL, {"id": bf["id"]}, "UiScaleCancel")
    for r in bf["runs"]:
        graphql(base, TERMINATE, {"id": r["id"]}, "UiScaleTerminate")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = [graphql(base, RUN, {"id": r["id"]}, "UiScaleRun")[0]["data"]["runOrError"] for r in bf["runs"]]
        if all(r["status"] in ("CANCELED", "SUCCESS", "FAILURE") for r in runs):
            break
        time.sleep(1)
    res["terminate_s"] = round(time.perf_counter() - t_cancel, 2)
    res["final_run_statuses"] = sorted(r["status"] for r in runs)
    print("materialize:", json.dumps(res), flush=True)
    return res


def stop(server: subprocess.Popen, home: str) -> list[int]:
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except ProcessLookupError:
        pass
    time.sleep(1)
    left = pids_with_home(home)
    for pid in left:  # a run worker or step that dagster dev's group did not hold
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--configs", type=Path, required=True)
    ap.add_argument("--task", default="bench")
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", default=None)
    ap.add_argument("--port", type=int, default=3391)
    ap.add_argument("--shots", type=Path, default=Path("/tmp/ui-shots"))
    ap.add_argument("--wait", type=float, default=60.0, help="seconds a page may take to show its status")
    ap.add_argument("--graphql-log", type=Path, default=None, help="write every GraphQL request here (JSON)")
    ap.add_argument("--replay", type=int, default=0, help="time each distinct query of the pages N more times")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="extra variable for dagster dev")
    ap.add_argument("--stacks", type=Path, default=None, help="py-spy stack samples of dagster dev to this file")
    ap.add_argument("--materialize", action="store_true", help="time 'Materialize all' -> Missing -> launch")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    out = args.output.resolve()
    home = str(out / ".dagster")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INFER_")}
    env.update({
        "DAGSTER_HOME": home, "LLM_INFER_OUTPUT": str(out), "LLM_INFER_TASKS": args.task,
        "LLM_INFER_TASK_CONFIGS": str(args.configs.resolve()), "LLM_INFER_MODEL_PATH": args.model,
        "LLM_INFER_MODEL_TYPE": "hf", "LLM_INFER_USE_CPU": "1", "LLM_INFER_DTYPE": "float32",
        "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "1", "CUDA_VISIBLE_DEVICES": "",
    })  # fmt: skip
    if args.input:
        env["LLM_INFER_INPUT_PATH"] = args.input
    env.update(kv.split("=", 1) for kv in args.env)
    dagster = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1",
               "-p", str(args.port)]  # fmt: skip
    args.shots.mkdir(parents=True, exist_ok=True)
    log = open(args.shots / "ui_scale_dagster.log", "w")  # noqa: SIM115 - lives as long as the server
    t_start = time.perf_counter()
    server = subprocess.Popen(dagster, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{args.port}"
    result: dict[str, Any] = {"benchmark": "ui_scale", "output": str(out), "env": args.env,
                              "nproc": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}  # fmt: skip
    loads: list[float] = []
    sampler: StackSampler | None = None
    try:
        wait_http(base + "/server_info", 180)
        result["server_up_s"] = round(time.perf_counter() - t_start, 1)
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        if args.stacks:
            sampler = StackSampler(server.pid, args.stacks, os.environ.get("PY_SPY", "py-spy")).__enter__()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            rec = GraphqlRecorder(page)
            loads.append(os.getloadavg()[0])
            if args.materialize:
                result["materialize"] = materialize_missing(page, base, args.task, rec, args.shots, args.wait)
            else:
                result["seconds"] = time_pages(page, base, args.task, rec, args.shots, args.wait)
            loads.append(os.getloadavg()[0])
            result["unfinished_requests"] = rec.unfinished()
            browser.close()
        if sampler:
            sampler.__exit__(None, None, None)
            sampler = None
        by_op: dict[str, list[float]] = {}
        for r in rec.done:
            by_op.setdefault(f"{r['page']}: {r['op']}", []).append(r["seconds"])
        result["graphql_max_s"] = {k: max(v) for k, v in sorted(by_op.items(), key=lambda kv: -max(kv[1]))[:8]}
        if args.graphql_log:
            args.graphql_log.write_text(json.dumps(rec.done + rec.unfinished(), indent=1))
        if args.replay and not args.materialize:
            result["replay"] = replay(base, rec, args.replay)
            loads.append(os.getloadavg()[0])
    finally:
        if sampler:
            sampler.__exit__(None, None, None)
        result["left_behind_killed"] = stop(server, home)
        log.close()
    result["load_avg_1m"] = [round(x, 2) for x in loads]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
