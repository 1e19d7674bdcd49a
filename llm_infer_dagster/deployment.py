"""The deployment: what decides what a shard holds, declared once and recorded in the output folder.

Paths, the task folders and their file/function names, and the declared default model (engine, path, dtype,
context length) fix the assets' code versions, so they are not run configuration: a Launchpad run cannot
change them and needs no guard against it. What only decides how fast a run goes (workers, tensor parallel
size, batch size, engine tuning) is the run's :class:`~llm_infer_dagster.orchestration.settings.RunSettings`.

Where a deployment comes from (:meth:`Deployment.load`):

- ``llm-infer`` builds it from its flags and **records** it in ``<output>/llm-infer.yaml`` (:func:`write_record`);
  the ``LLMInferComponent`` and ``llm_task_definitions`` declare it in YAML or Python and record it the first
  time a shard is made. A later deployment that disagrees about the same output folder is refused
  (:func:`check_agrees`) unless the change is asked for.
- A code location started with only the output folder named (``LLM_INFER_OUTPUT=out``, or ``DAGSTER_HOME``
  at ``out/.dagster``) loads the recorded deployment: the same tasks, models and code versions as the run.
- Without a record, ``LLM_INFER_*`` variables (the way before records; still read by tests and ``dagster dev``
  over this project's example tasks).

No Dagster here, and nothing reads the working directory when this module is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llm_infer_dagster.engines.spec import Dtype, ModelType
from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.shards.storage import StorePath, store_path
from llm_infer_dagster.shards.store import TaskStore, atomic_write_text
from llm_infer_dagster.tasks.task_settings import ModelChoice, TaskKind

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
    shard_size: int | None = Field(default=None, ge=1, description="Rows per shard of new input (default 512)")
    input_path: str | None = Field(default=None, description="Passed to get_file_list (else the task's own)")
    output_dir: str = Field(
        default_factory=_default_output_dir,
        validation_alias=AliasChoices("LLM_INFER_OUTPUT"),  # not a bare OUTPUT_DIR of the shell
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
    task_kind: TaskKind | None = Field(
        default=None,
        description="What the model does per row for this deployment's tasks (generate, embed, classify, reward), "
        "over each task_settings.json's \"task\" (the Component's task attribute); None: the task's own",
    )
    limit: int | None = Field(default=None, ge=1, description="Keep the first N rows of each shard (debug)")
    max_input_length: int | None = Field(default=None, ge=1, description="Prompt tokens allowed per row")
    id_length: int = Field(default=5, ge=1, description="Digits of the seed-layout result numbers")
    task_config_fn: str = Field(default="task_config.py", description="The task's Python file")
    sampling_params_fn: str = Field(default="sampling_params.json", description="The task's sampling file")
    get_file_list_func: str = Field(default="get_file_list", description="Name of the task's get_file_list")
    read_file_func: str = Field(default="read_file", description="Name of the task's read_file")
    format_prompt_func: str = Field(default="format_prompt", description="Name of the task's format_prompt")
    extract_answer_func: str = Field(default="extract_answer", description="Name of the task's extract_answer")
    run_defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="Run settings this deployment's runs start from (e.g. use_cpu, workers); a run's own win",
    )
    source: str | None = Field(
        default=None,
        description="Who declared it (llm-infer, a defs.yaml, Python); None: LLM_INFER_* variables, never recorded",
    )

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_list(cls, value: Any) -> Any:
        """A recorded (YAML) list of task names is the same as the comma-separated variable."""
        return ",".join(str(v) for v in value) if isinstance(value, list | tuple) else value

    @classmethod
    def load(cls) -> Deployment:
        """The deployment a code location (``dagster dev``, a daemon, a step process) builds its definitions from.

        The one recorded in the output folder that ``LLM_INFER_OUTPUT`` names, or that holds the instance at
        ``DAGSTER_HOME`` (``<out>/.dagster``); ``LLM_INFER_TASKS`` may narrow it to the tasks a process runs,
        ``LLM_INFER_STATE_DIR`` says where a URL output keeps its local state. No other variable changes it.
        Without a record: :meth:`from_env`.
        """
        output = os.environ.get("LLM_INFER_OUTPUT") or output_of_instance(os.environ.get("DAGSTER_HOME"))
        recorded = read_record(output) if output else None
        if recorded is None:
            return cls.from_env()
        only = os.environ.get("LLM_INFER_TASKS", "").strip()
        return recorded.model_copy(
            update={
                "tasks": only or recorded.tasks,
                "state_dir": os.environ.get("LLM_INFER_STATE_DIR") or recorded.state_dir,
            }
        )

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

    def identity(self) -> dict[str, Any]:
        """The fields that decide what a shard holds: two deployments of one output folder must agree on them."""
        return self.model_dump(include=set(IDENTITY_FIELDS))


def _one_line(exc: ValidationError, overrides: dict[str, Any]) -> str:
    parts = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else "?"
        where = (
            name if name in overrides else ("LLM_INFER_OUTPUT" if name == "output_dir" else ENV_PREFIX + name.upper())
        )
        parts.append(f"{where}={err.get('input')!r}: {err['msg']}")
    return "deployment setting " + "; ".join(parts)


#: What decides what a shard holds (and so the assets' code versions, or the rows and layout of a shard).
IDENTITY_FIELDS = (
    "task_configs", "input_path", "model_path", "model_type", "dtype", "max_model_len", "trust_remote_code",
    "limit", "max_input_length", "id_length", "task_config_fn", "sampling_params_fn", "get_file_list_func",
    "read_file_func", "format_prompt_func", "extract_answer_func", "task_kind",
)  # fmt: skip

#: What another model or task is: ``llm-infer`` refuses a change of these without ``--redeploy``. The others
#: (``limit``, ``max_input_length``, ``input_path``, ``id_length``) are flags a user changes on purpose (a
#: ``--limit`` debug run, then the whole job): the run says what changed and which shards that makes stale.
MODEL_FIELDS = ("model_path", "model_type", "dtype", "max_model_len", "trust_remote_code")
MODEL_AND_TASK_FIELDS = (
    *MODEL_FIELDS, "task_configs", "task_config_fn", "sampling_params_fn", "get_file_list_func", "read_file_func",
    "format_prompt_func", "extract_answer_func", "task_kind",
)  # fmt: skip

#: The recorded deployment of an output folder, and the version of its schema this code reads and writes.
RECORD_FILE = "llm-infer.yaml"
RECORD_SCHEMA = 1
#: Beside a URL output's local instance: which output that instance belongs to.
OUTPUT_POINTER = "llm-infer-output.txt"
_NOT_RECORDED = ("output_dir", "state_dir")  # where this folder is: from where it is found, not from the file

_RECORD_HEADER = """\
# The deployment of this output folder: what decides what its shards hold.
# Written by {source}; read by `llm-infer ui --output_path {output}`, by any code location started with
# LLM_INFER_OUTPUT={output} (or DAGSTER_HOME={output}/.dagster), and by every later run here.
# To change it, edit this file or pass --redeploy to llm-infer: the next run says which shards that makes stale.
"""


def record_path(output: str | os.PathLike[str] | StorePath) -> StorePath:
    out = output if not isinstance(output, str | os.PathLike) else store_path(output)
    return out / RECORD_FILE


def output_of_instance(dagster_home: str | None) -> str | None:
    """The output folder whose instance is at ``dagster_home`` (``<out>/.dagster``), if it holds a record."""
    if not dagster_home:
        return None
    around = Path(dagster_home).parent
    if (around / RECORD_FILE).is_file():
        return str(around)
    pointer = around / OUTPUT_POINTER  # a URL output's instance lives in a local state dir
    return pointer.read_text(encoding="utf-8").strip() or None if pointer.is_file() else None


def read_record(output: str | os.PathLike[str] | StorePath) -> Deployment | None:
    """The deployment recorded in ``output`` (None where there is none); a bad record is one SettingsError.

    The record's own location is the output folder: a folder that was moved still loads.
    """
    path = record_path(output)
    if not path.is_file():
        return None
    where = str(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SettingsError(f"{where}: not valid YAML ({' '.join(str(exc).split())}); fix or remove it") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("deployment"), dict):
        raise SettingsError(f"{where}: no 'deployment' mapping; it was not written by llm-infer: move it aside")
    schema = doc.get("schema")
    if schema != RECORD_SCHEMA:
        raise SettingsError(
            f"{where}: written with record schema {schema!r}, this llm-infer-dagster reads schema {RECORD_SCHEMA}; "
            "run the llm-infer-dagster version that wrote it, or a newer one (nothing was rewritten)"
        )
    fields = doc["deployment"]
    unknown = sorted(set(fields) - set(Deployment.model_fields) - set(_NOT_RECORDED))
    if unknown:
        raise SettingsError(
            f"{where}: unknown key {unknown[0]!r} under 'deployment' (known: "
            f"{', '.join(n for n in Deployment.model_fields if n not in _NOT_RECORDED)}); fix the file"
        )
    try:
        return Deployment(**{**fields, "output_dir": str(output).rstrip("/")})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "?"
        raise SettingsError(f"{where}: deployment.{key}={err.get('input')!r}: {err['msg']}; fix the file") from None


def write_record(deployment: Deployment) -> StorePath:
    """Record ``deployment`` in its output folder (atomically); returns the file's path."""
    output = store_path(deployment.output_dir)
    fields = deployment.model_dump(exclude=set(_NOT_RECORDED))
    fields["tasks"] = deployment.only_tasks
    body = yaml.safe_dump({"schema": RECORD_SCHEMA, "deployment": fields}, sort_keys=False)
    header = _RECORD_HEADER.format(source=deployment.source or "llm-infer", output=deployment.output_dir)
    path = record_path(output)
    atomic_write_text(path, header + body)
    return path


def differences(recorded: Deployment, wanted: Deployment, fields: tuple[str, ...] = IDENTITY_FIELDS) -> list[str]:
    """``field recorded -> wanted`` for each of ``fields`` the two disagree on."""
    a, b = recorded.identity(), wanted.identity()
    return [f"{k} {a[k]!r} -> {b[k]!r}" for k in fields if a[k] != b[k]]


def check_agrees(
    wanted: Deployment, *, change_with: str, fields: tuple[str, ...] = IDENTITY_FIELDS
) -> Deployment | None:
    """The recorded deployment of ``wanted``'s output folder, after checking that ``wanted`` agrees with it.

    SettingsError (one line, naming both) where they disagree on one of ``fields``; ``change_with`` says how the
    caller makes the change explicit. None where nothing is recorded yet.
    """
    recorded = read_record(wanted.output_dir)
    if recorded is None:
        return None
    diff = differences(recorded, wanted, fields)
    if diff:
        raise SettingsError(
            f"{record_path(wanted.output_dir)} (written by {recorded.source or 'llm-infer'}) and "
            f"{wanted.source or 'this deployment'} disagree about output folder {wanted.output_dir}: "
            f"{'; '.join(diff)}; {change_with}, or use another output folder"
        )
    return recorded


def with_tasks(deployment: Deployment, *names: str) -> Deployment:
    """``deployment`` also covering ``names`` (an output folder accumulates the tasks run into it)."""
    tasks = [*deployment.only_tasks, *(n for n in names if n not in deployment.only_tasks)]
    return deployment.model_copy(update={"tasks": ",".join(tasks)})


def claim_output(deployment: Deployment, task_name: str) -> None:
    """Before a declared deployment (a Component, ``llm_task_definitions``) writes a shard of ``task_name``:
    refuse if its output folder records another deployment, else record this one (with this task).

    A deployment read from ``LLM_INFER_*`` variables (``source`` None) is neither checked nor recorded.
    """
    if deployment.source is None:
        return
    recorded = check_agrees(
        deployment, change_with=f"edit {record_path(deployment.output_dir)} to the deployment you want (the next "
        "llm-infer run then says which shards that makes stale)"
    )  # fmt: skip
    if recorded is None:
        write_record(with_tasks(deployment, task_name))
    elif task_name not in recorded.only_tasks:
        write_record(with_tasks(recorded, task_name))
