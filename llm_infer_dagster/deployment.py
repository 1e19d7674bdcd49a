"""Deployment settings: what decides what a shard holds, read once where definitions are built.

Paths, the task folders and their file/function names, and the declared default model (engine, path, dtype,
context length) fix the assets' code versions, so they are not run configuration: a Launchpad run cannot
change them and needs no guard against it. They come from ``LLM_INFER_*`` variables (``llm-infer`` sets
them from its flags for the processes it starts); what only decides how fast a run goes (workers, tensor
parallel size, batch size, engine tuning) is the run's :class:`~llm_infer_dagster.orchestration.settings.RunSettings`.

No Dagster here, and nothing reads the working directory when this module is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from llm_infer_dagster.engines.spec import Dtype, ModelType
from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.shards.store import TaskStore
from llm_infer_dagster.tasks.task_settings import ModelChoice

ENV_PREFIX = "LLM_INFER_"

#: The source checkout's example tasks; a wheel install has none (set LLM_INFER_TASK_CONFIGS).
SOURCE_TASK_CONFIGS = Path(__file__).resolve().parent.parent / "task_configs"


def _default_output_dir() -> str:
    """Next to the Dagster instance that records the shards, so both move together; never the cwd."""
    home = os.environ.get("DAGSTER_HOME")
    return str(Path(home) / "llm_infer_output") if home else str(Path.home() / "llm-infer-output")


class Deployment(BaseSettings):
    """Where data lives, which task folders load with which file names, and the declared default model.

    Each field's variable is ``LLM_INFER_<FIELD>`` (``LLM_INFER_OUTPUT`` for ``output_dir``). Named models
    beside the default one are declared per task in ``task_settings.json`` (``models``).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, populate_by_name=True)

    task_configs: str = Field(
        default=str(SOURCE_TASK_CONFIGS), description="Folder of task folders (the seed's --config_path)"
    )
    tasks: str = Field(default="", description="Comma-separated task names to load (default: every folder)")
    input_path: str | None = Field(default=None, description="Passed to get_file_list (else the task's own)")
    output_dir: str = Field(
        default_factory=_default_output_dir,
        validation_alias=AliasChoices("output_dir", "LLM_INFER_OUTPUT"),
        description="Shards, manifests and the seed's results/ layout: a local folder or an fsspec URL (s3://...)",
    )
    state_dir: str | None = Field(
        default=None,
        description="With a URL output_dir: the local folder for its leases, locks and logs "
        "(default ~/.cache/llm-infer-dagster/state)",
    )
    model_path: str | None = Field(default=None, description="The default model: a local model folder")
    model_type: ModelType = Field(default="vllm", description="The default model's engine: vllm | hf")
    dtype: Dtype = Field(default="auto", description="The default model's dtype")
    max_model_len: int | None = Field(default=None, ge=1, description="The default model's context length")
    trust_remote_code: bool = Field(default=False, description="Run model code shipped in model folders")
    limit: int | None = Field(default=None, ge=1, description="Keep the first N rows of each shard (debug)")
    max_input_length: int | None = Field(default=None, ge=1, description="Prompt tokens allowed per row")
    id_length: int = Field(default=5, ge=1, description="Digits of the seed-layout result numbers")
    task_config_fn: str = Field(default="task_config.py", description="The task's Python file")
    sampling_params_fn: str = Field(default="sampling_params.json", description="The task's sampling file")
    get_file_list_func: str = Field(default="get_file_list", description="Name of the task's get_file_list")
    read_file_func: str = Field(default="read_file", description="Name of the task's read_file")
    format_prompt_func: str = Field(default="format_prompt", description="Name of the task's format_prompt")
    extract_answer_func: str = Field(default="extract_answer", description="Name of the task's extract_answer")

    @classmethod
    def from_env(cls, **overrides: Any) -> Deployment:
        """The ``LLM_INFER_*`` variables (``overrides`` win); a bad value is one SettingsError naming its variable."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(_one_line(exc, overrides)) from None

    @property
    def only_tasks(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]

    def store(self, task_name: str) -> TaskStore:
        return TaskStore(self.output_dir, task_name, id_length=self.id_length, state_dir=self.state_dir)

    def default_model(self) -> ModelChoice:
        """The model ``[<task>, completions]`` runs: ``LLM_INFER_MODEL_PATH`` (``llm-infer --model_path``)."""
        return ModelChoice(
            model_path=self.model_path or "",
            model_type=self.model_type,
            dtype=self.dtype,
            max_model_len=self.max_model_len,
        )

    def resolve(self, choice: ModelChoice | None) -> ModelChoice:
        """A task's named model with the default model's engine, dtype and context length where it sets none."""
        if choice is None:
            return self.default_model()
        # a copy, so a LoRA adapter (AdapterChoice) keeps its adapter folder
        return choice.model_copy(
            update={
                "model_type": choice.model_type or self.model_type,
                "dtype": choice.dtype or self.dtype,
                "max_model_len": choice.max_model_len or self.max_model_len,
            }
        )

    def env(self) -> dict[str, str]:
        """These settings as the ``LLM_INFER_*`` variables that make every started process read them back."""
        out: dict[str, str] = {}
        for name, value in self.model_dump().items():
            var = "LLM_INFER_OUTPUT" if name == "output_dir" else ENV_PREFIX + name.upper()
            if value is not None:
                out[var] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out

    def export_env(self) -> None:
        """Make these the deployment of this process's later loads and of every process it starts."""
        for name in type(self).model_fields:
            os.environ.pop("LLM_INFER_OUTPUT" if name == "output_dir" else ENV_PREFIX + name.upper(), None)
        os.environ.update(self.env())


def _one_line(exc: ValidationError, overrides: dict[str, Any]) -> str:
    parts = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else "?"
        where = (
            name if name in overrides else ("LLM_INFER_OUTPUT" if name == "output_dir" else ENV_PREFIX + name.upper())
        )
        parts.append(f"{where}={err.get('input')!r}: {err['msg']}")
    return "deployment setting " + "; ".join(parts)
