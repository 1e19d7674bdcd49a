"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` binaries, a fresh cluster in a temp dir,
listening on a unix socket only (no TCP port), stopped at the end.

PostgreSQL refuses to run as root; as root (CI) the cluster belongs to the `postgres` user Debian creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REQUIRE_ENV = "LLM_INFER_REQUIRE_POSTGRES"  # set by .ci/run: a missing server fails instead of skipping


def find_bin_dir() -> Path | None:
    """Where `initdb` and `pg_ctl` live (Debian keeps them in a versioned folder, off PATH)."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="llm-infer-pg-"))
        self.data, self.socket_dir = self.root / "data", self.root / "sock"
        self.port = 5432 + (os.getpid() % 1000)  # only names the socket file: nothing listens on TCP
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> PostgresServer:
        self.socket_dir.mkdir(parents=True)
        if self.as_user:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync")  # fmt: skip
        opts = f"-k {self.socket_dir} -c listen_addresses='' -p {self.port} -c fsync=off"
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
                  str(self.root / "server.log"), "-w", "-t", "60", "start")  # fmt: skip
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(dbname="postgres", user="postgres", host=str(self.socket_dir), port=self.port)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        for _ in range(50):
            if not (self.data / "postmaster.pid").exists():
                break
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)


def postgres_yaml(url: str) -> str:
    """A `dagster.yaml` whose instance (runs, events, schedules) lives in the database at ``url``."""
    return f'storage:\n  postgres:\n    postgres_url: "{url}"\ntelemetry:\n  enabled: false\n'
