"""The Ray actor that hosts one engine worker: a relay to our own worker process on the actor's node.

Each actor starts ``python -m llm_infer_dagster.runtime.worker`` as its child (its own process group, taken
down by the kernel when the actor dies), passes the pool's messages to its stdin and hands back what it
writes on its message pipe. The engine, the shard loop and the atomic shard writes are then exactly the
local ones (:mod:`llm_infer_dagster.runtime.worker`); Ray only places the actor and reserves its GPUs
(``CUDA_VISIBLE_DEVICES`` is set by Ray for the actor and inherited by the worker).

Imported only by :mod:`llm_infer_dagster.runtime.ray_pool`, inside a Ray session.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class WorkerActor:
    """One engine worker process on the node Ray placed this actor on (wrapped by ``ray.remote``)."""

    def __init__(self, command: Sequence[str] | None, env: dict[str, str], log_path: str) -> None:
        command = command or [sys.executable, "-m", "llm_infer_dagster.runtime.worker"]
        read_fd, write_fd = os.pipe()
        child_env = {**os.environ, **env}
        child_env["VLLM_PORT"] = str(_free_port())  # engines side by side on one node collide on vLLM's ports
        self.log_path = _writable_log(Path(log_path))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*command, str(write_fd), str(os.getpid())],  # the worker dies with this actor (process_tree.py)
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                env=child_env,
                text=True,
                start_new_session=True,
            )
        os.close(write_fd)
        self.msgs = read_fd
        os.set_blocking(read_fd, False)
        self.eof = False

    def where(self) -> dict[str, Any]:
        """Which node, actor and GPUs this is: for the run's logs."""
        import ray

        ctx = ray.get_runtime_context()
        node_id = ctx.get_node_id()
        nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
        node: dict[str, Any] = next((n for n in nodes if n.get("NodeID") == node_id), {})
        return {
            "node_id": node_id,
            "actor_id": ctx.get_actor_id() or "",
            "host": socket.gethostname(),
            "ip": node.get("NodeManagerAddress", ""),  # the address the node joined the cluster with
            "gpus": ",".join(str(g) for g in ray.get_gpu_ids()),
            "pid": self.proc.pid,
            "log": str(self.log_path),
        }

    def send(self, line: str) -> None:
        """A message line to the worker; a worker that is gone is noticed by ``poll``."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            self.proc.stdin.write(line)
            self.proc.stdin.flush()

    def poll(self, timeout: float) -> tuple[bytes, int | None]:
        """What the worker wrote within ``timeout`` seconds, and its exit code once it has exited."""
        chunks: list[bytes] = []
        if not self.eof:
            ready, _, _ = select.select([self.msgs], [], [], timeout)
            while ready:
                try:
                    chunk = os.read(self.msgs, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    self.eof = True
                    break
                chunks.append(chunk)
        else:
            time.sleep(min(timeout, 0.2))
        code = self.proc.poll()
        if code is None and self.eof:  # pipe closed: the worker is leaving
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(timeout=5)
        return b"".join(chunks), code

    def stop(self, grace: float = 10.0) -> None:
        """EOF to the worker (it finishes what it holds), then SIGKILL its process group."""
        from llm_infer_dagster.runtime.pool import _stop_process

        _stop_process(self.proc, grace)


def _writable_log(path: Path) -> Path:
    """The pool's log path where this node can write it (the driver's own machine); else this node's temp dir."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
        return path
    except OSError:
        import tempfile

        fallback = Path(tempfile.gettempdir()) / "llm-infer-workers" / path.name
        fallback.parent.mkdir(parents=True, exist_ok=True)
        return fallback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
