"""Processes that die with their parent, so nothing keeps a GPU after a crash or a `kill -9`.

Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere these are no-ops.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (survives ``exec``)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG


def take_group_down_with_parent(parent: int | None = None) -> None:
    """When the parent dies, SIGKILL this process *and its whole process group*.

    For an engine worker started as its own process group (``start_new_session=True``): vLLM starts engine
    core processes of its own, which a plain parent-death SIGKILL of the worker would orphan, still holding
    memory (seen: ``VLLM::EngineCore`` left running after ``kill -9`` of llm-infer). The parent-death signal
    is SIGTERM, handled by killing the group; a watchdog thread covers a main thread stuck in C code.

    ``parent`` is the pid the parent passed down: a parent that died before this ran (so the death signal,
    set only now, never comes) shows as ``getppid() != parent``, and the group goes down at once. Without
    it, the parent is whatever ``getppid()`` says now, which misses that race.
    """
    if not sys.platform.startswith("linux"):
        return
    own_group = os.getpgrp() == os.getpid()

    def kill_group(*_: object) -> None:
        if own_group:
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(1)

    signal.signal(signal.SIGTERM, kill_group)
    set_parent_death_signal(signal.SIGTERM)  # first, then check: a death after this check is signalled
    if parent is None:
        parent = os.getppid()
    elif os.getppid() != parent:
        kill_group()  # reparented already: the parent died before the signal was armed

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                kill_group()

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
