"""Does the Dagster UI stay usable at thousands of shards? Page load times in a real headless Chromium.

    apt-get install chromium && pip install playwright     # Debian's browser; `playwright install` is never run
    python benchmarks/ui_scale.py --output OUT --configs CONFIGS --task bench --model MODEL \
        [--input INPUT] [--port 3391] [--shots DIR]

OUT is an `llm-infer` output dir (e.g. one `scale.py --full-run` left, 2,000 shards). This starts
`dagster dev` on 127.0.0.1 against OUT's instance with the same settings the run had, then opens, in Debian's
Chromium driven by Playwright (`executable_path`, nothing downloaded), the task's asset group, the completions
asset, its partitions view and one shard's page, timing each from navigation until the page shows what a
person looks for, and saves screenshots. It stops every process it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--configs", type=Path, required=True)
    ap.add_argument("--task", default="bench")
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", default=None)
    ap.add_argument("--port", type=int, default=3391)
    ap.add_argument("--shots", type=Path, default=Path("/tmp/ui-shots"))
    args = ap.parse_args()
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    out = args.output.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INFER_")}
    env.update({
        "DAGSTER_HOME": str(out / ".dagster"), "LLM_INFER_OUTPUT": str(out), "LLM_INFER_TASKS": args.task,
        "LLM_INFER_TASK_CONFIGS": str(args.configs.resolve()), "LLM_INFER_MODEL_PATH": args.model,
        "LLM_INFER_MODEL_TYPE": "hf", "LLM_INFER_USE_CPU": "1", "LLM_INFER_DTYPE": "float32",
        "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "1", "CUDA_VISIBLE_DEVICES": "",
    })  # fmt: skip
    if args.input:
        env["LLM_INFER_INPUT_PATH"] = args.input
    dagster = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1",
               "-p", str(args.port)]  # fmt: skip
    log = open(args.shots.parent / "ui_scale_dagster.log", "w")  # noqa: SIM115 - lives as long as the server
    args.shots.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(dagster, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{args.port}"
    times: dict[str, float] = {}
    try:
        wait_http(base + "/server_info", 180)
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            pages = {
                # Ready when a materialization status is drawn, not just the page frame.
                "asset group graph": (f"/asset-groups/{args.task}", "text=/[Mm]aterialized/"),
                "completions asset": (f"/assets/{args.task}/completions", "text=/[Mm]aterialized/"),
                "completions partitions": (
                    f"/assets/{args.task}/completions?view=partitions",
                    "text=/Materialized \\(\\d+\\)/",
                ),
            }
            for name, (path, ready) in pages.items():
                t0 = time.perf_counter()
                page.goto(base + path, wait_until="domcontentloaded", timeout=120_000)
                try:
                    page.wait_for_selector(ready, timeout=60_000)
                    page.wait_for_load_state("networkidle", timeout=60_000)
                    times[name] = round(time.perf_counter() - t0, 2)
                except PlaywrightTimeout:
                    times[name] = -1.0  # what a person looks for did not appear within 60 s
                page.screenshot(path=str(args.shots / f"{name.replace(' ', '_')}.png"))
                print(f"{name}: {times[name]} s (-1: not shown within 60 s)", flush=True)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    print(json.dumps({"benchmark": "ui_scale", "output": str(out), "seconds": times}))


if __name__ == "__main__":
    main()
