"""``llm-infer ui --output_path out``: the Dagster UI over exactly what ``llm-infer`` ran into ``out``.

It names the output folder and nothing else: the code location loads the deployment recorded there
(``out/llm-infer.yaml``), the instance is the one ``llm-infer`` used (``out/.dagster``, or ``DAGSTER_HOME``
where it was set), so every shard shows as the run left it. The webserver listens on loopback unless
``--host`` says otherwise. ``dagster dev`` also runs the daemon, so sensors and schedules tick.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.orchestration.cli_args import DefaultsFormatter, OneLineParser

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="llm-infer ui",
        description="Open the Dagster UI (and daemon) over an output folder that llm-infer or the LLMInferComponent "
        "wrote: its recorded deployment, its instance.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--output_path", required=True, help="the output folder (or URL) of the runs to show")
    p.add_argument("--host", default=DEFAULT_HOST, help="address the webserver listens on (loopback by default)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="webserver port")
    return p


def ui_environment(output_path: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``dagster dev`` needs for ``output_path``: where the record and the instance are.

    SettingsError (one line) where the folder records no deployment.
    """
    from llm_infer_dagster.deployment import RECORD_FILE, read_record
    from llm_infer_dagster.orchestration.cli import PLANNED_EVENTS_ENV
    from llm_infer_dagster.shards.storage import state_dir_for, store_path

    env = dict(os.environ if environ is None else environ)
    output = store_path(output_path)
    if isinstance(output, Path):
        output = output.resolve()
    deployment = read_record(output)
    if deployment is None:
        raise SettingsError(
            f"{output} holds no {RECORD_FILE}: it is not an output folder of llm-infer (or of the LLMInferComponent) "
            "yet; run llm-infer with --output_path there first"
        )
    local = state_dir_for(output, env.get("LLM_INFER_STATE_DIR") or deployment.state_dir)
    home = Path(env.get("DAGSTER_HOME") or local / ".dagster").resolve()
    if not (home / "dagster.yaml").is_file():
        raise SettingsError(f"no Dagster instance at {home} (DAGSTER_HOME): run llm-infer with --output_path {output}")
    env.pop("LLM_INFER_TASKS", None)  # every task recorded there
    env.update({"DAGSTER_HOME": str(home), "LLM_INFER_OUTPUT": str(output)})
    env.setdefault(PLANNED_EVENTS_ENV, "1")
    return env


#: The code location as the source checkout's workspace.yaml names it, so links and bookmarks are the same.
WORKSPACE = """\
load_from:
  - python_module:
      module_name: llm_infer_dagster.definitions
      attribute: defs
      location_name: llm_infer_dagster
"""


def ui_command(host: str, port: int, workspace: Path) -> list[str]:
    return [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-h", host, "-p", str(port)]


def run(args: argparse.Namespace) -> int:
    from llm_infer_dagster.shards.store import atomic_write_text

    env = ui_environment(args.output_path)
    workspace = Path(env["DAGSTER_HOME"]) / "llm-infer-workspace.yaml"
    atomic_write_text(workspace, WORKSPACE)
    command = ui_command(args.host, args.port, workspace)
    print(f"llm-infer ui: Dagster UI on http://{args.host}:{args.port} over {env['LLM_INFER_OUTPUT']}", file=sys.stderr)
    os.execve(command[0], command, env)  # the UI's process from now on; Ctrl-C stops it as it stops dagster dev


def open_command(output: object) -> str:
    """The one command that opens an output folder's results, as ``llm-infer`` prints it last."""
    return f"llm-infer ui --output_path {shlex.quote(str(output))}"
