"""``python -m llm_infer_dagster.runtime.lease_exec --need N --gpus IDS --lock-dir D -- CMD...``

Takes a GPU lease, puts the leased ids in ``CUDA_VISIBLE_DEVICES`` (empty for a CPU step), then ``exec``s the
step command. The lease's lock descriptors survive the exec, so the step process itself holds its GPUs until
it exits, however it exits; their numbers go in ``LLM_INFER_GPU_LEASE_FDS`` so its engine workers inherit them
and the GPUs stay leased until the last process using them is gone. It also asks to be killed when its
parent (the run) dies.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from llm_infer_dagster.runtime.leases import LEASE_FDS_ENV, GpuLeaser
from llm_infer_dagster.runtime.process_tree import set_parent_death_signal


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        sys.exit("lease_exec: expected '-- <command>'")
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="lease_exec")
    p.add_argument("--need", type=int, required=True)
    p.add_argument("--gpus", default="")
    p.add_argument("--lock-dir", required=True)
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--label", default="step")
    args = p.parse_args(argv[:split])
    command = argv[split + 1 :]

    set_parent_death_signal(signal.SIGKILL)  # kept across the exec below
    env = dict(os.environ)
    if args.need > 0:
        leaser = GpuLeaser([g for g in args.gpus.split(",") if g], args.lock_dir)
        lease = leaser.acquire(
            args.need,
            timeout=args.timeout,
            on_wait=lambda: print(
                f"{args.label}: waiting for {args.need} free GPU(s) of {args.gpus}", file=sys.stderr, flush=True
            ),
        )
        env["CUDA_VISIBLE_DEVICES"] = ",".join(lease.gpu_ids)
        env[LEASE_FDS_ENV] = ",".join(str(fd) for fd in lease.fds)  # the step's workers inherit these
        print(f"{args.label}: leased GPU(s) {env['CUDA_VISIBLE_DEVICES']}", file=sys.stderr, flush=True)
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU step sees no GPU
        env.pop(LEASE_FDS_ENV, None)
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()
