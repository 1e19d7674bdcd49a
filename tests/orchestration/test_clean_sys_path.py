"""Step processes (and the Pythons they start) never import modules from the folder the run was started in.

``python -m`` puts the cwd ahead of the standard library: a ``concurrent.py`` or ``json.py`` there would be run by
every step. The real GPU executor runs a real ``execute_job`` from such a folder, as ``llm-infer`` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llm_infer_dagster.orchestration.dagster_internals.gpu_executor import (
    SYS_PATH_PLACEHOLDER,
    safe_path,
    step_command,
    step_env,
)

SHADOWS = ("concurrent", "json", "argparse", "yaml")  # stdlib imported by Dagster, by lease_exec; a third-party one

DEFS = """
import json, os, subprocess, sys
from pathlib import Path

from dagster import Definitions, asset, define_asset_job

from llm_infer_dagster.orchestration.dagster_internals.gpu_executor import gpu_executor


@asset(op_tags={"llm_infer/gpus": "1"})
def probe() -> None:
    # Like an engine worker (`python -m ...`) and its spawned engine core (`python -c ...`), from the same cwd.
    by_c = subprocess.run(
        [sys.executable, "-c", "import concurrent.futures, json, sys; print(json.dumps(sys.path))"],
        capture_output=True, text=True, check=True,
    )
    by_m = subprocess.run([sys.executable, "-m", "json.tool"], input="{}", capture_output=True, text=True, check=True)
    Path(os.environ["PROBE_OUT"]).write_text(json.dumps({
        "cwd": os.getcwd(),
        "path": sys.path,
        "child_path": json.loads(by_c.stdout),
        "json_tool": by_m.stdout.strip(),
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }))


defs = Definitions(assets=[probe], jobs=[define_asset_job("probe_job", [probe])], executor=gpu_executor)
"""

# Started as a script from outside the user's folder, like the `llm-infer` console script; the code location is
# an importable module with no working directory, as llm-infer's should be (not the user's cwd).
RUNNER = """
import os, sys

from dagster import DagsterInstance, execute_job
from dagster._core.definitions.reconstruct import ReconstructableRepository

recon = ReconstructableRepository.for_module("clean_path_defs", "defs", None).get_reconstructable_job("probe_job")
config = {"execution": {"config": {"gpus": ["g0"], "lock_dir": os.environ["LOCK_DIR"]}}}
with DagsterInstance.get() as instance:
    result = execute_job(recon, instance=instance, run_config=config)
sys.exit(0 if result.success else 1)
"""


def test_safe_path_adds_dash_p_to_python_dash_m_only() -> None:
    assert safe_path(step_command(["dagster", "api", "execute_step"])) == [
        sys.executable, "-P", "-m", "dagster", "api", "execute_step"
    ]  # fmt: skip
    assert safe_path(["/venv/bin/python3.11", "-m", "dagster"]) == ["/venv/bin/python3.11", "-P", "-m", "dagster"]
    assert safe_path(["/usr/bin/dagster-step", "-m", "x"]) == ["/usr/bin/dagster-step", "-m", "x"]
    assert safe_path([sys.executable, "script.py"]) == [sys.executable, "script.py"]


@pytest.mark.slow
def test_steps_run_from_a_folder_of_shadowing_modules_import_none_of_them(tmp_path: Path) -> None:
    user, marks, code, home = (tmp_path / d for d in ("user_cwd", "marks", "code", "home"))
    for d in (user, marks, code, home):
        d.mkdir()
    for name in SHADOWS:
        (user / f"{name}.py").write_text(f"open({str(marks / name)!r}, 'w').write('imported from the cwd')\n")
    (code / "clean_path_defs.py").write_text(textwrap.dedent(DEFS))
    runner = tmp_path / "run_job.py"
    runner.write_text(textwrap.dedent(RUNNER))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    env |= {
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": str(code),
        "PROBE_OUT": str(tmp_path / "probe.json"),
        "LOCK_DIR": str(tmp_path / "locks"),
    }

    # The trap works: a plain `python -m` from that folder runs its json.py.
    subprocess.run([sys.executable, "-m", "json.tool"], cwd=user, env=env, input="{}", capture_output=True, text=True)
    assert (marks / "json").exists()
    (marks / "json").unlink()

    proc = subprocess.run([sys.executable, str(runner)], cwd=user, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in marks.iterdir()) == []
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert Path(probe["cwd"]).resolve() == user.resolve()  # relative paths still mean the user's folder
    assert probe["gpus"] == "g0"  # it went through the lease
    for path in (probe["path"], probe["child_path"]):
        assert "" not in path and not any(Path(p).resolve() == user.resolve() for p in path if p), path
    assert probe["json_tool"] == "{}"
    assert probe["path"][0] == SYS_PATH_PLACEHOLDER  # what Dagster drops while importing the code (on PYTHONPATH)


def test_step_env_drops_empty_pythonpath_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PYTHONPATH=:/app`` (an ``export PYTHONPATH=$PYTHONPATH:/app`` from nothing) means the cwd, then /app."""
    monkeypatch.setenv("PYTHONPATH", f"{os.pathsep}/app{os.pathsep}")
    env = step_env()
    assert env["PYTHONPATH"].split(os.pathsep) == [SYS_PATH_PLACEHOLDER, "/app"]
    assert env["PYTHONSAFEPATH"] == "1"
    monkeypatch.delenv("PYTHONPATH")
    assert step_env()["PYTHONPATH"] == SYS_PATH_PLACEHOLDER
    assert not os.path.exists(SYS_PATH_PLACEHOLDER)
