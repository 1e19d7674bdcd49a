"""The Dagster UI end to end, in a real browser: `dagster dev` (webserver + daemon) on one task, driven by
Debian's Chromium through Playwright as a user would drive it.

1. `llm-infer` makes the first 3 shards; the task's group graph shows every asset; the completions asset's
   Partitions tab shows them materialized, and one shard's detail shows its metadata.
2. A new input file: the task's `_new_shards` sensor registers its 2 shards, "Materialize all" -> Missing
   launches their backfill, and they show materialized with metadata.
3. A new prompt template and "Reload definitions": Dagster 1.13 shows staleness of a partitioned asset only
   in one partition's detail ("Unsynced (1)", hover: "has a new code version"); the graph nodes, the asset's
   Overview (beyond its new code version) and the Partitions list show nothing stale. The `_missing_shards`
   schedule's "Preview tick result" lists one run request over every shard, "Launch all" redoes them, and
   the shards are fresh again.

Screenshots go to `<tmp_path>/shots` (the path is printed). Needs `pip install -e '.[ui-test]'` and
`apt-get install chromium` (`playwright install` is never run); skipped without them unless
LLM_INFER_REQUIRE_BROWSER is set (CI), where it fails instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tests_support import CONFIGS, cli_env, llm_infer, write_qa_input

REQUIRE_ENV = "LLM_INFER_REQUIRE_BROWSER"
TASK = "qa_regex"
LOCATION = "/locations/__repository__@llm_infer_dagster"
ASSETS = ("input", "raw", "prompts", "completions", "answers")
WAIT_MS = 120_000  # what a page must show, on a busy 2-CPU machine
RUNS = "query { runsOrError(limit: 20) { ... on Runs { results { runId status } } } }"
STALE = """query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) {
  ... on AssetNode { partitionKeys staleStatusByPartition } } }"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, with Playwright for Python to drive it; skip (or fail, under CI) without them."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    missing = [] if importlib.util.find_spec("playwright") else ["playwright (pip install -e '.[ui-test]')"]
    missing += [] if path else ["Chromium (apt-get install chromium)"]
    if missing:
        why = "needs " + " and ".join(missing)
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{why}; CI requires it ({REQUIRE_ENV} is set)")
        pytest.skip(why)
    assert path is not None
    return path


def graphql(base: str, query: str, **variables: object) -> dict:
    body = json.dumps({"query": query, "variables": variables}).encode()
    req = urllib.request.Request(base + "/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)["data"]


def run_ids(base: str) -> dict[str, str]:
    return {r["runId"]: r["status"] for r in graphql(base, RUNS)["runsOrError"]["results"]}


def wait_new_runs_done(base: str, before: set[str], log: Path, timeout: float = 300) -> None:
    """Until a run not in `before` exists and every such run has ended; each must have succeeded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = {k: v for k, v in run_ids(base).items() if k not in before}
        if new and all(v in ("SUCCESS", "FAILURE", "CANCELED") for v in new.values()):
            assert set(new.values()) == {"SUCCESS"}, f"runs {new}; dagster dev: {log.read_text()[-3000:]}"
            return
        time.sleep(1)
    raise AssertionError(f"no finished run within {timeout} s; dagster dev: {log.read_text()[-3000:]}")


def stale_by_partition(base: str, asset: str) -> dict[str, str]:
    node = graphql(base, STALE, path=[TASK, asset])["assetNodeOrError"]
    return dict(zip(node["partitionKeys"], node["staleStatusByPartition"], strict=True))


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dagster dev exited: {log.read_text()[-3000:]}"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, home: Path) -> None:
    """dagster dev's process group, then any process left with this DAGSTER_HOME (a run worker, a step)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its children outlive it on SIGTERM
    proc.wait()
    needle = f"DAGSTER_HOME={home}".encode()
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    os.kill(int(d.name), signal.SIGKILL)


@pytest.mark.slow
def test_ui_new_shards_and_stale_redo_in_browser(chromium, tmp_path, tiny_model_path):
    from playwright.sync_api import expect, sync_playwright

    out, configs, data, shots = (tmp_path / n for n in ("out", "configs", "input", "shots"))
    shots.mkdir()
    print(f"\nscreenshots: {shots}")
    task_dir = configs / TASK
    shutil.copytree(CONFIGS / TASK, task_dir, ignore=shutil.ignore_patterns("data", "__pycache__"))
    shutil.copy(CONFIGS / "default_sampling_params.json", configs)
    settings = {"input_path": str(data), "shard_size": 2, "sensor": {"enabled": True, "interval_seconds": 5}}
    (task_dir / "task_settings.json").write_text(json.dumps(settings))
    write_qa_input(data, files=1, rows=6)  # part-000.jsonl: 3 shards
    env = cli_env()  # a user's shell: nothing but what the commands are given
    r = llm_infer("--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu", "--output_path", str(out),
                  "--task_name", TASK, "--config_path", str(configs), env=env)  # fmt: skip
    assert r.returncode == 0 and "3/3 shards done" in r.stdout + r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].endswith(f"llm-infer ui --output_path {out}")
    home = out / ".dagster"  # the instance llm-infer made
    (home / ".nux").mkdir(parents=True)
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")  # no "Join the Dagster community" modal

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "dagster_dev.log"
    # The UI as llm-infer printed it: only the output folder named (its recorded deployment and its instance).
    cmd = [sys.executable, "-m", "llm_infer_dagster", "ui", "--output_path", str(out), "--port", str(port)]
    with log.open("w") as f:
        server = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    pw = page = None
    try:
        wait_http(base + "/server_info", server, log)
        pw = sync_playwright().start()
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1900, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)

        def shot(name: str) -> None:
            page.screenshot(path=str(shots / f"{name}.png"))

        def open_shard(asset: str, key: str) -> None:
            """The asset's Partitions tab, then a click on the shard: its detail on the right."""
            page.goto(f"{base}/assets/{TASK}/{asset}?view=partitions")
            page.get_by_text(key, exact=True).filter(visible=True).first.click()
            expect(page).to_have_url(re.compile(f"partition={re.escape(key)}"))
            expect(page.get_by_text(re.compile(r"^View all historical events \([1-9]"))).to_be_visible()
            page.wait_for_load_state("networkidle")  # the partition's stale query has answered

        def code_version(other_than: str = "") -> str:
            """The completions asset's Overview -> Compute details -> Code version (one != ``other_than``).

            The page may first render what the browser cached from an earlier visit (the UI keeps asset
            definitions in IndexedDB and refreshes them in the background), so it is loaded again until it
            shows another version than ``other_than`` or 90 s pass.
            """
            deadline = time.monotonic() + 90
            while True:
                page.goto(f"{base}/assets/{TASK}/completions")
                label = page.get_by_text("Code version", exact=True)
                expect(page.get_by_text("Compute details")).to_be_visible()
                if not label.is_visible():  # the section's open/closed state is kept in the browser
                    page.get_by_text("Compute details").click()
                expect(label).to_be_visible()
                for _ in range(5):
                    # The UI may show a shortened form ("0453462…5e9018d") before the full one.
                    text = page.locator("body").inner_text()
                    found = re.search(r"Code version\s+(?:[0-9a-f]+\u2026[0-9a-f]+\s+)?([0-9a-f]{8,})", text)
                    assert found, text[-2000:]
                    if found.group(1) != other_than or time.monotonic() > deadline:
                        return found.group(1)
                    page.wait_for_timeout(1000)

        unsynced = page.get_by_text(re.compile(r"^Unsynced \(\d+\)$"))
        metadata = [page.get_by_text(k, exact=True) for k in ("rows", "tokens_per_s")]

        # 1. The task's group graph: every asset node, each with its shard count.
        page.goto(f"{base}{LOCATION}/asset-groups/{TASK}")
        for name in ASSETS:
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
        expect(page.get_by_text("3 partitions", exact=True)).to_have_count(len(ASSETS))
        # every node 100% filled, the input too: its registered shards are recorded as there, not missing
        expect(page.get_by_text("100% filled", exact=True)).to_have_count(len(ASSETS))
        shot("01_group_graph")
        # The task's report (llm-infer made it): its chart, an SVG data URI in Markdown, renders as an image.
        page.goto(f"{base}/assets/{TASK}/report")
        page.get_by_text("[Show Markdown]").first.click()  # Dagster folds long Markdown metadata behind this
        chart = page.get_by_role("dialog").last.locator("img[src^='data:image/svg+xml;base64,']")
        expect(chart).to_have_count(1)
        assert chart.evaluate("e => e.decode().then(() => e.naturalWidth)") > 300
        shot("01b_report_chart")
        page.keyboard.press("Escape")
        # 2. The completions asset's Partitions tab.
        page.goto(f"{base}/assets/{TASK}/completions?view=partitions")
        expect(page.get_by_text("Materialized (3)")).to_be_visible()
        expect(page.get_by_text("Missing (0)")).to_be_visible()
        # the picker lists shards by file and chunk, whole (keys short enough not to be cut)
        for chunk in range(3):
            expect(page.get_by_text(f"part_000_jsonl-{chunk:05d}", exact=True).first).to_be_visible()
        shot("02_completions_partitions")
        keys = list(stale_by_partition(base, "completions"))
        # 3. One shard's detail: materialized, with the shard's metadata, and up to date.
        open_shard("completions", keys[1])
        expect(page.get_by_text("Materialized", exact=True)).to_be_visible()
        for m in metadata:
            expect(m).to_be_visible()
        expect(unsynced).to_have_count(0)
        shot("03_shard_detail")
        version_before = code_version()

        # 4. A new input file: the sensor registers its shards, "Materialize all" -> Missing makes them.
        with (data / "part-001.jsonl").open("w") as fh:
            for i in range(4):
                fh.write(json.dumps({"question": f"What is 9 + {i}?", "gold": 9 + i}) + "\n")
        deadline = time.monotonic() + 120
        while len(stale_by_partition(base, "completions")) < 5:  # the sensor ticks every 5 s
            assert time.monotonic() < deadline, f"the sensor registered nothing: {log.read_text()[-3000:]}"
            time.sleep(1)
        page.goto(f"{base}/assets/{TASK}/completions?view=partitions")
        expect(page.get_by_text("Missing (2)")).to_be_visible()
        page.goto(f"{base}{LOCATION}/asset-groups/{TASK}")
        expect(page.get_by_text("5 partitions", exact=True)).to_have_count(len(ASSETS))
        expect(page.get_by_text("60% filled", exact=True)).to_have_count(len(ASSETS) - 1)  # the input: 100%
        before = set(run_ids(base))
        page.get_by_role("button", name=re.compile(r"Materialize all")).first.click()
        dialog = page.get_by_role("dialog").last
        dialog.get_by_role("button", name="Missing", exact=True).click()
        expect(dialog.get_by_text("2 partitions", exact=True)).to_be_visible()
        shot("04_materialize_missing_dialog")
        dialog.get_by_role("button", name="Launch backfill").click()
        expect(page.get_by_text(re.compile(r"^Created backfill"))).to_be_visible()
        wait_new_runs_done(base, before, log)  # the backfill daemon starts its run (ticks every 30 s)
        keys = list(stale_by_partition(base, "completions"))
        page.goto(f"{base}/assets/{TASK}/answers?view=partitions")
        expect(page.get_by_text("Materialized (5)")).to_be_visible()
        open_shard("completions", keys[4])
        expect(page.get_by_text("Materialized", exact=True)).to_be_visible()
        for m in metadata:
            expect(m).to_be_visible()
        shot("05_new_shard_detail")

        # 5. A new prompt template, definitions reloaded from the UI: what shows the shards stale.
        template = task_dir / "prompt_template.txt"
        template.write_text(template.read_text().replace("Solve the problem", "Work it out"))
        page.goto(f"{base}{LOCATION}/asset-groups/{TASK}")
        page.get_by_role("button", name="Reload definitions").click()
        expect(page.get_by_text("Definitions reloaded!")).to_be_visible()
        stale = {a: set(stale_by_partition(base, a).values()) for a in ASSETS[1:]}
        assert stale == {"raw": {"FRESH"}, "prompts": {"STALE"}, "completions": {"STALE"}, "answers": {"STALE"}}
        # The graph: status as before, nothing about staleness (a partitioned asset is FRESH as a whole).
        page.goto(f"{base}{LOCATION}/asset-groups/{TASK}")
        expect(page.get_by_text("100% filled", exact=True)).to_have_count(len(ASSETS))
        shot("06_stale_group_graph")
        # The asset's Overview: its new code version.
        assert code_version(other_than=version_before) != version_before
        shot("07_stale_completions_overview")
        page.goto(f"{base}/assets/{TASK}/completions?view=partitions")
        expect(page.get_by_text("Materialized (5)")).to_be_visible()
        shot("08_stale_completions_partitions")
        # One partition's detail: "Unsynced (1)"; its popover names the cause.
        open_shard("completions", keys[1])
        expect(unsynced).to_have_text("Unsynced (1)")
        unsynced.hover()
        expect(page.get_by_text("1 code version change")).to_be_visible()
        expect(page.get_by_text("has a new code version")).to_be_visible()
        shot("09_stale_shard_detail")
        open_shard("raw", keys[1])
        expect(unsynced).to_have_count(0)  # the template does not change what raw holds

        # Redo: the missing-shards schedule's tick preview lists one run over every stale shard; launch it.
        before = set(run_ids(base))
        page.goto(f"{base}{LOCATION}/schedules/{TASK}_missing_shards")
        page.get_by_role("button", name="Preview tick result").click()
        dialog = page.get_by_role("dialog").last
        dialog.get_by_role("button", name="Continue").click()
        expect(dialog.get_by_text("Requested runs (1)")).to_be_visible()
        shot("10_schedule_preview")
        dialog.get_by_role("button", name="Launch all & commit tick result").click()
        expect(page.get_by_text("Launched 1 runs")).to_be_visible()
        wait_new_runs_done(base, before, log)
        for asset in ASSETS[1:]:
            assert set(stale_by_partition(base, asset).values()) == {"FRESH"}, asset
        open_shard("completions", keys[1])
        expect(page.get_by_text("View all historical events (2)")).to_be_visible()
        expect(unsynced).to_have_count(0)
        shot("11_redone_shard_detail")
    except BaseException:
        if page is not None:
            with contextlib.suppress(Exception):
                page.screenshot(path=str(shots / "failure.png"))
        raise
    finally:
        if pw is not None:
            with contextlib.suppress(Exception):
                pw.stop()  # closes the browser
        stop(server, home)
