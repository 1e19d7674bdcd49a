"""The bad-input matrix of issue 13 (``tests/orchestration/test_input_matrix.py``), run on its own, with its
table of figures.

    python benchmarks/input_matrix.py [-k EXPR]     # -k: as pytest's, though the table needs every case

It runs the test module (one finished run of the tiny HF model, then each case on a fresh copy of it) and
prints: cases, how many exit with the expected code, how many print the expected one-line message, how many
keep no traceback off the terminal, how many keep the prior results, and one row per case.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-k", default=None, help="pytest -k expression (the figures need the whole matrix)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "figures.txt"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/orchestration/test_input_matrix.py",
        ]
        cmd += ["-k", args.k] if args.k else []
        proc = subprocess.run(
            cmd, cwd=REPO, env={**os.environ, "LLM_INFER_MATRIX_REPORT": str(report), "LLM_INFER_FULL_MATRIX": "1"}
        )
        print(report.read_text() if report.exists() else "no figures: only part of the matrix ran")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
