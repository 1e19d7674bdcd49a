"""``python -m llm_infer_dagster.demo``: the whole platform on a fresh machine, no model hub needed.

Builds the tiny real model into ``.models/tiny-llama`` (once), then runs ``llm-infer`` on the ``qa_regex``
example task with the HF engine on CPU into ``./output`` (Dagster instance: ``./output/.dagster``).
Extra arguments are passed to ``llm-infer`` (e.g. ``--task_name chat_example``, ``--rerun``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from llm_infer_dagster.orchestration.cli import main as llm_infer
from llm_infer_dagster.orchestration.ui import open_command
from llm_infer_dagster.testing.tiny_model import build_tiny_model


def main(argv: list[str] | None = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    model = build_tiny_model(Path(".models") / "tiny-llama")
    defaults = [
        "--model_path",
        str(model),
        "--model_type",
        "hf",
        "--use_cpu",
        "--output_path",
        "output",
        "--task_name",
        "qa_regex",
        "--save_text",
    ]
    code = llm_infer([*defaults, *extra])  # argparse keeps the last value: extra flags override defaults
    # The run recorded its deployment in output/llm-infer.yaml: naming the folder is all the UI needs.
    print(f"\nSee it in the Dagster UI:\n  {open_command(Path.cwd() / 'output')}")
    return code


if __name__ == "__main__":
    sys.exit(main())
