"""How `llm-infer` behaves as a job grows: registration, time to the first completions shard, per-shard
bookkeeping, the whole run, a no-op resume, and peak RSS per process.

    python benchmarks/scale.py --rows 1000000 --files 100 [--shard-size 512] [--full-run] \
        [--model-type hf] [--work-dir /tmp/scale-bench] [--overhead-rows 400] [--no-checks]

Everything runs through the real command (`python -m llm_infer_dagster`) on a task folder written into the
work dir (JSON Lines of questions, a string prompt, a regex answer) with a tiny random-weight model built
locally, on the embedded sqlite instance under the output dir. The steps, each on its own output dir:

- registration: `--plan_only` on a fresh output dir (reads every file, cuts shards, records partitions and
  input observations);
- first shard: then the real run on that registered output, timed from start until the first completions
  Parquet file is in place; without `--full-run` the run is then killed (SIGKILL of its process group: the
  platform's crash guarantees make that safe) and the other steps are skipped;
- run: with `--full-run`, until the command exits; then resume: the same command again (nothing to do);
- overhead: `--overhead-rows` rows as one-row shards vs the same rows as one shard, both with one new token per
  row; (wall one-row - wall one-shard) / (rows - 1) is the bookkeeping cost of one shard. Beside it (sqlite
  only), the step's pace in the one-row run: first to last completions materialization in its event log, over
  the shards between (each one-row shard's generation included, the start-up noise of two whole runs not).

`--event-log-only N` measures just the event-log part of a shard, in this process: a Dagster run (`materialize`
on a fresh pooled sqlite instance) logs N shards' records as the step does (3 materializations, a log line,
3 completions check evaluations, the answers' materialization and check, each preceded by the sink's
`get_maximum_record_id`), through `context.log_event`; ms a shard, wall and CPU.

A no-op resume at many shards without a long run: `--rows 2000 --files 1 --shard-size 1 --max-tokens 1
--full-run` (2,000 one-row shards).

`--postgres` keeps each output's Dagster instance in its own database on a throwaway PostgreSQL server (Debian's
`postgresql`, a unix socket: tests/postgres_server.py) instead of sqlite; `--event-batch-size N` sets Dagster's
`DAGSTER_EVENT_BATCH_SIZE` for every process.

Peak RSS is sampled (psutil, every 0.2 s) for every process of the command's tree, grouped by role (the CLI,
step processes, engine workers). Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent

TASK_CONFIG = '''"""Benchmark task: JSON Lines of questions; extract_answer parses 'answer is N'."""
import json
import os
import re

ANSWER_RE = re.compile(r"answer is\\s*(-?\\d+)")


def get_file_list(input_path):
    return sorted(os.path.join(input_path, f) for f in os.listdir(input_path) if f.endswith(".jsonl"))


def read_file(file_path):
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(org_data):
    return "Question: " + org_data["question"] + "\\nAnswer:"


def extract_answer(model_response):
    m = ANSWER_RE.search(model_response)
    return int(m.group(1)) if m else None
'''


def write_task(configs: Path, max_tokens: int, checks: bool = True) -> None:
    folder = configs / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task_config.py").write_text(TASK_CONFIG)
    (folder / "sampling_params.json").write_text(json.dumps({"temperature": 0, "max_tokens": max_tokens}))
    if not checks:  # versions without per-shard quality checks ignore the file's absence
        (folder / "task_settings.json").write_text(json.dumps({"checks": {"enabled": False}}))


def write_input(path: Path, rows: int, files: int) -> Path:
    """``rows`` rows over ``files`` JSONL files (reused when already there)."""
    marker = path / ".done"
    if marker.is_file():
        return path
    path.mkdir(parents=True, exist_ok=True)
    per_file = -(-rows // files)
    written = 0
    for f in range(files):
        n = min(per_file, rows - written)
        with (path / f"part-{f:04d}.jsonl").open("w") as fh:
            for i in range(n):
                fh.write(json.dumps({"question": f"What is {f} + {i}?", "gold": f + i}) + "\n")
        written += n
    marker.write_text(str(rows))
    return path


def role(cmdline: list[str]) -> str:
    line = " ".join(cmdline)
    if "runtime.worker" in line:
        return "worker"
    if "execute_step" in line:
        return "step"
    if "lease_exec" in line:
        return "lease wrapper"
    if "llm_infer_dagster" in line:
        return "cli"
    return "engine/other"


class RssSampler:
    """Peak RSS per process of a process tree, by role."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                continue
            for p in procs:
                try:
                    r, rss = role(p.cmdline()), p.memory_info().rss
                except psutil.Error:
                    continue
                self.peak[r] = max(self.peak.get(r, 0), rss)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v / 2**20, 1) for k, v in sorted(self.peak.items())}


def llm_infer_cmd(args: argparse.Namespace, configs: Path, data: Path, out: Path, *extra: str) -> list[str]:
    cmd = [
        sys.executable, "-m", "llm_infer_dagster", "--no_progress", "--task_name", "bench",
        "--config_path", str(configs), "--input_path", str(data), "--output_path", str(out),
        "--model_path", str(args.model), "--model_type", args.model_type, "--use_cpu", "--dtype", "float32",
    ]  # fmt: skip
    if args.model_type == "vllm":
        cmd += ["--model_args", json.dumps({"enforce_eager": True, "kv_cache_memory_bytes": 1 << 30})]
    return [*cmd, *extra]


EXTRA_ENV: dict[str, str] = {}


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_INFER_", "DAGSTER_HOME"))}
    e["CUDA_VISIBLE_DEVICES"] = ""
    e.update(EXTRA_ENV)
    return e


class Instances:
    """Where each output's Dagster instance lives: sqlite under it (llm-infer's default) or a Postgres database."""

    def __init__(self, postgres: bool) -> None:
        self.server = None
        if postgres:
            sys.path.insert(0, str(REPO / "tests"))
            from postgres_server import PostgresServer, find_bin_dir

            bin_dir = find_bin_dir()
            if bin_dir is None:
                raise SystemExit("--postgres needs Debian's postgresql package (initdb, pg_ctl)")
            self.server = PostgresServer(bin_dir).start()

    def prepare(self, out: Path) -> None:
        """Before the first command on ``out``: a dagster.yaml naming a fresh database (llm-infer keeps it)."""
        if self.server is None:
            return
        from postgres_server import postgres_yaml

        home = out / ".dagster"
        home.mkdir(parents=True, exist_ok=True)
        url = self.server.create_database(f"bench_{out.name.replace('-', '_')}")
        (home / "dagster.yaml").write_text(postgres_yaml(url))

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def timed(cmd: list[str], *, until: Path | None = None, kill_at_until: bool = False) -> dict[str, Any]:
    """Run ``cmd``; wall time, time until a file appears under ``until`` (if given), peak RSS by role."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    sampler = RssSampler(proc.pid)
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout or []), daemon=True)
    reader.start()
    first: float | None = None
    while proc.poll() is None:
        if until is not None and first is None and until.is_dir() and any(until.glob("*.parquet")):
            first = time.perf_counter() - t0
            if kill_at_until:
                os.killpg(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.05)
    proc.wait()
    wall = time.perf_counter() - t0
    reader.join(timeout=5)
    rss = sampler.stop()
    text = b"".join(output).decode(errors="replace")
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"command failed (rc {proc.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
    return {"wall_s": round(wall, 2), "first_shard_s": round(first, 2) if first else None, "rss_mb": rss,
            "last_line": text.strip().splitlines()[-1] if text.strip() else ""}  # fmt: skip


def step_pace_ms(out: Path) -> float | None:
    """Milliseconds per shard between the first and the last completions materialization of ``out``'s sqlite
    instance (None on Postgres or with fewer than two)."""
    import sqlite3
    from datetime import datetime

    index = out / ".dagster" / "history" / "runs" / "index.db"
    if not index.is_file():
        return None
    with sqlite3.connect(index) as conn:
        rows = conn.execute(
            "SELECT timestamp FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
            "AND asset_key LIKE '%\"completions\"]'"
        ).fetchall()
    if len(rows) < 2:
        return None
    times = sorted(datetime.fromisoformat(t) for (t,) in rows)
    return round((times[-1] - times[0]).total_seconds() / (len(times) - 1) * 1000, 1)


def event_log_only(shards: int) -> dict[str, float]:
    """Milliseconds a shard of the step's event-log records alone (see the module docstring)."""
    import tempfile
    import warnings

    from dagster import (
        AssetCheckEvaluation,
        AssetCheckSpec,
        AssetKey,
        AssetMaterialization,
        AssetSpec,
        DagsterInstance,
        PreviewWarning,
        StaticPartitionsDefinition,
        materialize,
        multi_asset,
    )

    from llm_infer_dagster.orchestration.assets import checks
    from llm_infer_dagster.orchestration.dagster_internals.sqlite_events import instance_yaml

    parts = StaticPartitionsDefinition(["all"])
    keys = {a: AssetKey(["bench", a]) for a in ("raw", "prompts", "completions", "answers")}
    names = {"completions": ["error_rows", "empty_completions", "cut_at_max_tokens"], "answers": ["extraction_failed"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        specs = [AssetCheckSpec(n, asset=keys[a], partitions_def=parts) for a, ns in names.items() for n in ns]
    hold = getattr(checks, "holding_evaluations", None)  # absent before the evaluations were batched
    out: dict[str, float] = {}

    @multi_asset(specs=[AssetSpec(k, partitions_def=parts, skippable=True) for k in keys.values()],
                 check_specs=specs, can_subset=True)  # fmt: skip
    def shards_asset(context):  # type: ignore[no-untyped-def]  # Dagster refuses a string annotation
        instance, storage = context.instance, context.instance.event_log_storage

        def record(asset: str, shard: str) -> None:
            storage.get_maximum_record_id()
            context.log_event(AssetMaterialization(keys[asset], partition=shard, metadata={"rows": 1, "x": "y" * 100}))

        def evaluate(asset: str, shard: str) -> None:
            target = checks.latest_target(instance, keys[asset], shard)
            with hold(instance) if hold else contextlib.nullcontext():
                for n in names[asset]:
                    md = {"share": 0.0, "count": 0, "rows": 1}
                    context.log_event(AssetCheckEvaluation(asset_key=keys[asset], check_name=n, passed=True,
                                      partition=shard, metadata=md, target_materialization_data=target))  # fmt: skip

        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(shards):
            shard = f"part_0000_jsonl-{i:05d}"
            for asset in ("raw", "prompts", "completions"):
                record(asset, shard)
            context.log.info(f"shard {shard}: 1 rows, 0 errors")
            evaluate("completions", shard)
            record("answers", shard)
            evaluate("answers", shard)
        out["wall_ms"] = round((time.perf_counter() - t0) / shards * 1000, 2)
        out["cpu_ms"] = round((time.process_time() - c0) / shards * 1000, 2)
        yield from ()

    home = Path(tempfile.mkdtemp(prefix="event-log-only-"))
    (home / "dagster.yaml").write_text(instance_yaml(home))
    with DagsterInstance.from_config(str(home)) as instance:
        assert materialize([shards_asset], instance=instance, partition_key="all").success
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--shard-size", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--model-type", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/scale-bench"))
    ap.add_argument("--full-run", action="store_true", help="run to the end, then time a no-op resume")
    ap.add_argument("--overhead-rows", type=int, default=0, help="also measure per-shard cost with this many rows")
    ap.add_argument("--postgres", action="store_true", help="each output's instance in a Postgres database")
    ap.add_argument("--no-checks", action="store_true", help='the task turns its quality checks off ("enabled": false)')
    ap.add_argument("--event-batch-size", type=int, default=0, help="DAGSTER_EVENT_BATCH_SIZE for every process")
    ap.add_argument("--event-log-only", type=int, default=0, metavar="N",
                    help="only time N shards' event-log records in one Dagster run (ms a shard)")  # fmt: skip
    args = ap.parse_args()
    if args.event_log_only:
        load = os.getloadavg()[0]
        print(json.dumps({"event_log_only": args.event_log_only, "load_before": load,
                          **event_log_only(args.event_log_only), "load_after": os.getloadavg()[0]}))  # fmt: skip
        return
    if args.event_batch_size:
        EXTRA_ENV["DAGSTER_EVENT_BATCH_SIZE"] = str(args.event_batch_size)
    instances = Instances(args.postgres)
    try:
        measure(args, instances)
    finally:
        instances.stop()


def measure(args: argparse.Namespace, instances: Instances) -> None:

    from llm_infer_dagster.testing.tiny_model import build_tiny_model

    work = args.work_dir.resolve()
    args.model = build_tiny_model(work / "model")
    configs = work / "configs"
    write_task(configs, args.max_tokens, checks=not args.no_checks)
    data = write_input(work / f"input-{args.rows}-{args.files}", args.rows, args.files)
    tag = f"{args.rows}-{args.files}-{args.shard_size}-{args.model_type}" + ("-pg" if args.postgres else "")
    out = work / f"out-{tag}-{int(time.time())}"
    size = ["--shard_size", str(args.shard_size)]
    result: dict[str, Any] = {
        "rows": args.rows, "files": args.files, "shard_size": args.shard_size, "model_type": args.model_type,
        "shards": -(-args.rows // args.files // args.shard_size) * args.files if args.rows >= args.files else 1,
        "machine": f"{platform.machine()} {os.cpu_count()} vCPU, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "load_before": os.getloadavg()[0], "instance": "postgres" if args.postgres else "sqlite",
        "event_batch_size": args.event_batch_size,
    }  # fmt: skip
    instances.prepare(out)
    result["registration"] = timed(llm_infer_cmd(args, configs, data, out, "--plan_only", *size))
    comp_dir = out / "bench" / "completions"
    result["first_shard"] = timed(llm_infer_cmd(args, configs, data, out, *size), until=comp_dir,
                                  kill_at_until=not args.full_run)  # fmt: skip
    if args.full_run:
        result["resume"] = timed(llm_infer_cmd(args, configs, data, out, *size))
    if args.overhead_rows:
        small = write_input(work / f"input-{args.overhead_rows}-1", args.overhead_rows, 1)
        write_task(configs, 1, checks=not args.no_checks)
        row_out, shard_out = work / f"out-1row-{int(time.time())}", work / f"out-1shard-{int(time.time())}"
        instances.prepare(row_out)
        instances.prepare(shard_out)
        one_row = timed(llm_infer_cmd(args, configs, small, row_out, "--shard_size", "1"))
        one_shard = timed(llm_infer_cmd(args, configs, small, shard_out, "--shard_size", str(args.overhead_rows)))
        write_task(configs, args.max_tokens, checks=not args.no_checks)
        result["overhead"] = {
            "one_row_shards": one_row, "one_shard": one_shard,
            "per_shard_ms": round((one_row["wall_s"] - one_shard["wall_s"]) / (args.overhead_rows - 1) * 1000, 1),
            "step_pace_ms": step_pace_ms(row_out),
        }  # fmt: skip
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result))
    print(f"\n{args.rows} rows in {args.files} files, shards of {args.shard_size} ({result['shards']} shards), "
          f"{args.model_type}, {result['instance']} instance, event batch {args.event_batch_size}; "
          f"load {result['load_before']:.2f} -> {result['load_after']:.2f}")  # fmt: skip
    for name in ("registration", "first_shard", "resume"):
        r = result.get(name)
        if r:
            print(f"  {name:<13} wall {r['wall_s']:>8.2f} s  first shard {r['first_shard_s']}  rss {r['rss_mb']}")
    if "overhead" in result:
        o = result["overhead"]
        print(f"  per-shard bookkeeping: {o['per_shard_ms']} ms ({args.overhead_rows} one-row shards "
              f"{o['one_row_shards']['wall_s']} s vs one shard {o['one_shard']['wall_s']} s); "
              f"step pace {o['step_pace_ms']} ms a one-row shard")  # fmt: skip


if __name__ == "__main__":
    main()
