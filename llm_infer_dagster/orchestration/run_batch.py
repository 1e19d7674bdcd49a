"""``llm-infer run-batch -i requests.jsonl -o results.jsonl --model_path M``: vLLM's ``run-batch``, as Dagster runs.

The requests file becomes the built-in OpenAI batch task (``tasks/openai_batch.py``) in a work dir next to the
output (``<output_file>.llm-infer/`` unless ``--output_path`` says where): ``task_configs/batch/requests.jsonl``
is a link to the input, and the work dir is an ``llm-infer`` output dir (shards, logs, the Dagster instance at
``.dagster``). So the requests are shards like any task's, a crash or ``kill -9`` loses only the shards in flight,
the same command again redoes only the unfinished ones, and ``dagster dev`` shows it all.

At the end ``llm-infer`` writes the output file (``batch_output.py``). This module imports the CLI (its flags and
its run); the CLI never imports it back.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llm_infer_dagster.errors import SettingsError, TaskConfigError
from llm_infer_dagster.orchestration.cli_args import (
    DefaultsFormatter,
    OneLineParser,
    package_version,
    unknown_flags,
    unrecognized_message,
)

if TYPE_CHECKING:
    pass

#: The task's name in the work dir (its Dagster group, asset key prefix and job: ``batch_job``).
TASK = "batch"
#: The seed flags run-batch sets itself, or that would leave requests out of the output.
REFUSED_FLAGS = (
    "--task_name", "--config_path", "--input_path", "--task_config_fn", "--sampling_params_fn",
    "--get_file_list_func", "--read_file_func", "--format_prompt_func", "--extract_answer_func", "--limit",
)  # fmt: skip


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="llm-infer run-batch",
        description="Run an OpenAI batch file (vLLM run-batch's format) as Dagster runs; every other flag is "
        "llm-infer's (--model_path, --model_type, --use_cpu, --workers, --shard_size, --model_args, ...).",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--version", action="version", version=f"llm-infer (llm-infer-dagster) {package_version()}")
    p.add_argument("-i", "--input_file", required=True, help="the requests, one JSON object per line")
    p.add_argument("-o", "--output_file", required=True, help="the results, one line per request, in input order")
    p.add_argument(
        "--output_path",
        default=None,
        help="llm-infer's output dir: shards, logs and the Dagster instance (default: <output_file>.llm-infer); "
        "run the same command again to resume",
    )
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """run-batch's own flags plus llm-infer's: the seed's Namespace for this task, with ``batch_output`` set."""
    from llm_infer_dagster.orchestration.cli import build_parser as seed_parser

    parser, seed = build_parser(), seed_parser()
    seed.prog = parser.prog  # a mistake in llm-infer's flags here is run-batch's: its name, its --help
    flags = [*parser.flags(), *seed.flags()]
    if unknown := unknown_flags(argv, flags):  # before "-i is required" hides a typo of it
        parser.fail(unrecognized_message(unknown, flags, parser.prog))
    own, rest = parser.parse_known_args(list(argv))
    for flag in rest:
        if flag.split("=", 1)[0] in REFUSED_FLAGS:
            parser.error(f"{flag.split('=', 1)[0]} is set by run-batch itself (or would leave requests out)")
    work = Path(own.output_path or f"{own.output_file}.llm-infer").resolve()
    configs = work / "task_configs"
    args = seed.parse_args([*rest, "--task_name", TASK, "--config_path", str(configs), "--output_path", str(work)])
    args.batch_input = str(Path(own.input_file).resolve())
    args.batch_output = str(Path(own.output_file).resolve())
    return args


def run(args: argparse.Namespace) -> int:
    """Check the requests file (before any model loads), link it into the work dir's task folder, run the task."""
    from llm_infer_dagster.orchestration.cli import run as run_task
    from llm_infer_dagster.shards.seed_folder import refuse_seed_folder
    from llm_infer_dagster.tasks.openai_batch import REQUESTS_FILE, read_requests

    source = Path(args.batch_input)
    if not source.is_file():
        raise SettingsError(f"-i {source}: no such file; give the requests file (one JSON request per line)")
    requests = read_requests(source)  # a line that is not JSON, no custom_id, a custom_id twice: refused here
    if not requests:
        raise TaskConfigError(f"{source}: no requests (every line is blank); give one JSON request per line")
    if Path(args.batch_output) == source:
        raise SettingsError(f"-o {args.batch_output} is the input file; write the results somewhere else")
    refuse_seed_folder(Path(args.output_path))  # before the task folder is made in the work dir
    folder = Path(args.config_path) / TASK
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / REQUESTS_FILE
    if not (link.is_symlink() and Path(os.readlink(link)) == source):
        tmp = folder / f".{REQUESTS_FILE}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(source)
        os.replace(tmp, link)  # another input on a resumed work dir: its rows differ, its shards are redone
    return run_task(args)
