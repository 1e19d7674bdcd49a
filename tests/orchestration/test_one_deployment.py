"""One declared deployment: ``llm-infer`` records it, and a code location given only the output folder, a
hand-written ``defs.yaml`` of the LLMInferComponent and ``llm-infer`` all agree on what is stale."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests_support import CONFIGS, cli_env, llm_infer

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "llm_infer_project"
DG = shutil.which("dg") or str(Path(sys.executable).parent / "dg")

#: Run in a clean interpreter with only what the environment names: the assets' code versions, and the shards
#: Dagster's own resolver calls stale, of every completions asset (printed as JSON).
PROBE = textwrap.dedent(
    """
    import json, sys
    import dagster as dg
    from dagster import AssetKey, DagsterInstance
    from llm_infer_dagster.orchestration.staleness import stale_keys, stale_resolver
    defs = %s
    graph = defs.resolve_asset_graph()
    instance = DagsterInstance.get()
    versions = {k.to_user_string(): graph.get(k).code_version for k in graph.materializable_asset_keys}
    stale = {}
    resolver = stale_resolver(instance, graph)
    for key in graph.materializable_asset_keys:
        if key.path[-1] not in ("completions", "answers"):
            continue
        parts = instance.get_materialized_partitions(key)
        stale[key.to_user_string()] = sorted(stale_keys(resolver, [key], parts))
        stale[key.to_user_string() + " done"] = len(parts)
    print(json.dumps({"versions": versions, "stale": stale}))
    """
)


def _probe(defs_expr: str, env: dict[str, str], cwd: Path) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", PROBE % defs_expr], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _defs_yaml(folder: Path, task: Path, out: Path, model: str, extra: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "defs.yaml").write_text(
        "type: llm_infer_dagster.LLMInferComponent\n"
        "attributes:\n"
        f"  task_folder: {os.path.relpath(task, folder)}\n"
        f"  output_path: {out}\n"
        f"  model: {{model_path: {model}, model_type: hf, use_cpu: true}}\n" + extra
    )


def _project(tmp_path: Path) -> Path:
    """A copy of the example dg project with its defs/ emptied."""
    proj = tmp_path / "proj"
    shutil.copytree(EXAMPLE, proj, ignore=shutil.ignore_patterns("__pycache__", "llm_infer_output"))
    shutil.rmtree(proj / "src" / "llm_infer_project" / "defs")
    (proj / "src" / "llm_infer_project" / "defs").mkdir()
    return proj


def _dg(proj: Path, *args: str) -> subprocess.CompletedProcess:
    env = cli_env(PYTHONPATH=str(proj / "src"))
    return subprocess.run([DG, *args], cwd=proj, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_finished_run_is_seen_whole_with_only_the_output_folder_named(tmp_path, tiny_model_path):
    out = tmp_path / "out"
    base = ["--model_path", tiny_model_path, "--model_type", "hf", "--use_cpu", "--output_path", str(out),
            "--task_name", "qa_regex", "--config_path", str(CONFIGS), "--no_progress"]  # fmt: skip
    run = llm_infer(*base)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip().splitlines()[-1] == f"see them in the Dagster UI: llm-infer ui --output_path {out}"
    assert (out / "llm-infer.yaml").is_file()

    # 1. A clean environment naming only the output folder (no model, engine or task variable).
    by_output = _probe("dg.Definitions.merge(__import__('llm_infer_dagster.definitions').definitions.defs())",
                       cli_env(LLM_INFER_OUTPUT=str(out), DAGSTER_HOME=str(out / ".dagster")), tmp_path)  # fmt: skip
    assert by_output["stale"] == {"qa_regex/completions": [], "qa_regex/completions done": 2,
                                  "qa_regex/answers": [], "qa_regex/answers done": 2}  # fmt: skip
    # 2. Only DAGSTER_HOME (the instance llm-infer made): the same.
    by_home = _probe("__import__('llm_infer_dagster.definitions').definitions.defs()",
                     cli_env(DAGSTER_HOME=str(out / ".dagster")), tmp_path)  # fmt: skip
    assert by_home == by_output
    # 3. The minimal defs.yaml of the LLMInferComponent, same task, model and output: same code versions.
    proj = _project(tmp_path)
    _defs_yaml(proj / "src" / "llm_infer_project" / "defs" / "qa", CONFIGS / "qa_regex", out, tiny_model_path)
    by_yaml = _probe(
        "__import__('llm_infer_project.definitions').definitions.defs()",
        cli_env(PYTHONPATH=str(proj / "src"), DAGSTER_HOME=str(out / ".dagster")),
        proj,
    )
    assert by_yaml["versions"] == by_output["versions"] and by_yaml["stale"] == by_output["stale"]

    # Another model into the same folder is refused before any work, naming both; the record is untouched.
    record = (out / "llm-infer.yaml").read_bytes()
    other = llm_infer(*[a if a != "hf" else "vllm" for a in base])
    assert other.returncode == 2
    err = other.stderr.strip().splitlines()
    assert len(err) == 1 and "model_type 'hf' -> 'vllm'" in err[0] and "--redeploy" in err[0], other.stderr
    assert str(out / "llm-infer.yaml") in err[0]
    assert (out / "llm-infer.yaml").read_bytes() == record
    # --redeploy says what it makes stale before it starts (a plan: nothing is written).
    plan = llm_infer(*[a if a != "hf" else "vllm" for a in base], "--redeploy", "--plan_only")
    assert plan.returncode == 0, plan.stderr
    assert "deployment changed (model_type 'hf' -> 'vllm')" in plan.stderr
    assert "2 shard(s) to redo" in plan.stderr and plan.stdout.count(" stale ") == 2
    assert (out / "llm-infer.yaml").read_bytes() == record


@pytest.mark.slow
def test_dg_scaffold_writes_a_component_and_a_task_that_load(tmp_path, tiny_model_path):
    proj = _project(tmp_path)
    listed = _dg(proj, "list", "components")
    assert listed.returncode == 0 and "llm_infer_dagster.LLMInferComponent" in listed.stdout, listed.stderr
    made = _dg(proj, "scaffold", "defs", "llm_infer_dagster.LLMInferComponent", "arith")
    assert made.returncode == 0, made.stderr
    here = proj / "src" / "llm_infer_project" / "defs" / "arith"
    assert (here / "defs.yaml").is_file() and (here / "arith" / "task_config.py").is_file()
    text = (here / "defs.yaml").read_text().replace("/path/to/model", tiny_model_path)
    (here / "defs.yaml").write_text(text.replace("model_type: vllm", "model_type: hf\n    use_cpu: true"))
    checked = _dg(proj, "check", "defs")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The skeleton is a real task: its shards register and run on the tiny model through the task's job.
    env = cli_env(PYTHONPATH=str(proj / "src"), DAGSTER_HOME=str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    for job in ("arith_register_shards", "arith_job"):
        tags = [] if job.endswith("shards") else ["--tags", json.dumps({"dagster/partition": _first_shard(env)})]
        r = subprocess.run(
            [sys.executable, "-m", "dagster", "job", "execute", "-m", "llm_infer_project.definitions", "-a", "defs",
             "-j", job, *tags], env=env, cwd=proj, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
    out = proj / "llm_infer_output" / "arith"
    assert len(list((out / "arith" / "answers").glob("*.parquet"))) == 1
    assert "source: " + str(here / "defs.yaml") in (out / "llm-infer.yaml").read_text()


def _first_shard(env: dict[str, str]) -> str:
    code = "from dagster import DagsterInstance; print(DagsterInstance.get().get_dynamic_partitions('arith_shards')[0])"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.slow
def test_a_broken_defs_yaml_is_one_line_and_a_missing_folder_leaves_the_others_loading(tmp_path, tiny_model_path):
    proj = _project(tmp_path)
    defs = proj / "src" / "llm_infer_project" / "defs"
    out = tmp_path / "out"
    _defs_yaml(defs / "good", CONFIGS / "qa_regex", out, tiny_model_path)
    _defs_yaml(defs / "gone", tmp_path / "no_such_task", tmp_path / "out2", tiny_model_path)
    empty = tmp_path / "empty_model"
    empty.mkdir()
    _defs_yaml(defs / "nomodel", CONFIGS / "chat_example", tmp_path / "out3", str(empty))
    ok = _dg(proj, "check", "defs")
    assert ok.returncode == 0, ok.stdout + ok.stderr  # the folder problems are placeholders: the rest loads
    probe = (
        "import json; from llm_infer_project.definitions import defs; g = defs().resolve_asset_graph(); "
        "print(json.dumps({k.to_user_string(): (g.get(k).description or '') for k in g.get_all_asset_keys()}))"
    )
    r = subprocess.run([sys.executable, "-c", probe], env=cli_env(PYTHONPATH=str(proj / "src")), cwd=proj,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assets = json.loads(r.stdout.strip().splitlines()[-1])
    assert "qa_regex/completions" in assets
    gone = assets["no_such_task/task_folder"]
    assert str(defs / "gone" / "defs.yaml") in gone and "task_folder" in gone and "does not exist" in gone
    nomodel = assets["chat_example/task_folder"]
    assert str(defs / "nomodel" / "defs.yaml") in nomodel and "model.model_path" in nomodel
    assert "config.json" in nomodel

    # A typo in an attribute fails `dg check defs`, naming the file and the attribute.
    (defs / "gone" / "defs.yaml").unlink()
    (defs / "nomodel" / "defs.yaml").write_text(
        (defs / "good" / "defs.yaml").read_text().replace("output_path", "ouput_path")
    )
    bad = _dg(proj, "check", "defs")
    assert bad.returncode != 0
    said = bad.stdout + bad.stderr
    assert "ouput_path" in said and "nomodel/defs.yaml" in said, said[-3000:]
