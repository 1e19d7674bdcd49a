"""Load a seed task folder and call its four functions with errors that name the file and the row.

A task folder is ``<task_configs>/<name>/task_config.py`` defining ``get_file_list``, ``read_file``,
``format_prompt`` and ``extract_answer``, plus an optional ``sampling_params.json`` merged over
``<task_configs>/default_sampling_params.json``. Folders written for the seed load with no edit.

The seed's ``--task_config_fn``, ``--sampling_params_fn`` and ``--*_func`` flags pick other file and function
names inside the folder (:class:`TaskFiles`); every message names the file and function actually used.

Beyond the seed, a task file may also define ``score(answer, org_data)`` (:data:`SCORE_FUNCTION`): a number
per answered row, stored in the answers' ``score`` column and aggregated by the task's report. A folder
without it loads and runs as before.

A folder with no task file and a ``requests.jsonl`` is the built-in OpenAI batch task (``tasks/openai_batch.py``
is its four functions; its own sampling defaults, see there). A folder with no task file and a ``task.yaml`` is a
task without Python (``tasks/yaml_task.py`` makes its four functions from the YAML); ``task.yaml`` wins over a
``requests.jsonl`` beside it. So is a folder whose ``defs.yaml`` declares an ``LLMInferComponent`` with the same
fields inline (the Component's inline form; its ``name`` attribute may name the task other than the folder).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import keyword
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from llm_infer_dagster.errors import SettingsError, TaskConfigError
from llm_infer_dagster.tasks import openai_batch, yaml_task
from llm_infer_dagster.tasks.sampling import (
    SAMPLING_FILE,
    check_combination,
    load_sampling_params,
    validate_sampling_params,
)
from llm_infer_dagster.tasks.task_settings import TASK_KINDS, TaskKind, TaskSettings, load_task_settings

REQUIRED_FUNCTIONS = ("get_file_list", "read_file", "format_prompt", "extract_answer")
#: The optional scorer: ``score(answer, org_data) -> number | None`` (beyond the seed; no flag renames it).
SCORE_FUNCTION = "score"
TASK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CONFIG_FILE = "task_config.py"
DEFAULTS_FILE = "default_sampling_params.json"
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class TaskFiles:
    """Which file and which functions of a task folder are the task (the seed's six naming flags).

    One set per process: the CLI and the code location load every task with the same names.
    """

    task_config_fn: str = CONFIG_FILE
    sampling_params_fn: str = SAMPLING_FILE
    get_file_list_func: str = "get_file_list"
    read_file_func: str = "read_file"
    format_prompt_func: str = "format_prompt"
    extract_answer_func: str = "extract_answer"

    def __post_init__(self) -> None:
        for name, suffix in (("task_config_fn", ".py"), ("sampling_params_fn", ".json")):
            value = getattr(self, name)
            if (
                not isinstance(value, str)
                or not _FILE_NAME_RE.fullmatch(value)
                or ".." in value
                or not value.endswith(suffix)
                or value == suffix
            ):
                raise SettingsError(
                    f"--{name} / LLM_INFER_{name.upper()}={value!r} is not a plain file name inside the task "
                    f"folder (letters, digits, '_', '-', '.'; no '/' or '..'; ending in {suffix}); "
                    f"give one like {getattr(TaskFiles, name)!r}"
                )
        for role in REQUIRED_FUNCTIONS:
            value = getattr(self, f"{role}_func")
            if not isinstance(value, str) or not value.isidentifier() or keyword.iskeyword(value):
                raise SettingsError(
                    f"--{role}_func / LLM_INFER_{role.upper()}_FUNC={value!r} is not a Python function name; "
                    f"give the name of a function defined in the task file, like {role!r}"
                )

    @classmethod
    def from_settings(cls, settings: object) -> TaskFiles:
        """The names from anything carrying the six settings (``InferenceSettings``, the CLI's args)."""
        names: dict[str, Any] = {f.name: getattr(settings, f.name, f.default) for f in fields(cls)}
        return cls(**names)  # __post_init__ checks each value

    def function(self, role: str) -> str:
        """The name of the function that plays ``role`` (one of REQUIRED_FUNCTIONS)."""
        return str(getattr(self, f"{role}_func"))

    @property
    def functions(self) -> dict[str, str]:
        """role -> the function name used for it, in REQUIRED_FUNCTIONS order."""
        return {role: self.function(role) for role in REQUIRED_FUNCTIONS}

    @property
    def is_default(self) -> bool:
        return self == TaskFiles()


def _describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


#: Chat messages; a ``content`` is a string, or a list of OpenAI-style parts (text, images: tasks/images.py).
Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class RowPrompt:
    """What ``format_prompt`` returned as a dict: the prompt, and the row's own sampling parameters.

    ``sampling_params`` holds only the keys the row overrides (validated, the task's merged parameters
    under them); None when it overrides none, so such a row is stored exactly like a plain prompt.
    """

    prompt: str | Messages
    sampling_params: dict[str, Any] | None = None


class RowSamplingError(TaskConfigError):
    """A row's ``"sampling_params"`` are not valid: the task's code is wrong, so its shard fails (not the row)."""


#: The keys a dict from format_prompt may hold: one of the first two, optionally the third.
ROW_PROMPT_KEYS = ("prompt", "messages", "sampling_params")
_RETURNS = (
    "must return a str or a list of {'role': str, 'content': str} messages, or a dict with 'prompt' (text) or "
    "'messages' (chat) and optionally 'sampling_params'"
)


def _is_content(value: Any) -> bool:
    """A message's content: a string, or a list of parts (dicts with a ``type``: text, image_url, ...)."""
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in value)
    )


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and _is_content(m.get("content")) for m in value
    )


@dataclass
class TaskConfig:
    """A loaded task: its folder, its four functions and its merged sampling parameters."""

    name: str
    folder: Path
    module: ModuleType = field(repr=False)
    sampling_params: dict[str, Any]
    settings: TaskSettings = field(default_factory=TaskSettings)
    files: TaskFiles = field(default_factory=TaskFiles)
    #: The built-in OpenAI batch task (a folder holding only requests.jsonl): its functions are the package's.
    is_openai_batch: bool = False
    #: A task without Python (a folder holding task.yaml and no task file): its functions are made from the YAML.
    is_yaml: bool = False

    def with_kind(self, kind: TaskKind | None) -> TaskConfig:
        """This task doing ``kind`` per row instead of its task_settings.json's (None: as it is)."""
        if kind is None or kind == self.settings.task:
            return self
        return replace(self, settings=self.settings.model_copy(update={"task": kind}))

    def input_path(self, configured: str | None) -> str | None:
        """The input path for get_file_list: the run's setting if given, else the task's own."""
        return configured or self.settings.input_path

    @property
    def config_file(self) -> Path:
        if self.is_openai_batch or self.is_yaml:
            return Path(str(self.module.__file__))
        return self.folder / self.files.task_config_fn

    @property
    def dagster_name(self) -> str:
        """The task name as a valid Dagster name (asset key prefix, group, job)."""
        return re.sub(r"[^A-Za-z0-9_]", "_", self.name)

    def _fn(self, role: str) -> Callable[..., Any]:
        """The task's function for ``role`` (its name may be another, by ``--<role>_func``)."""
        fn: Callable[..., Any] = getattr(self.module, self.files.function(role))  # checked by _check_functions
        return fn

    def list_files(self, input_path: str | None) -> list[str]:
        """``get_file_list(input_path)``, checked to be a list of existing files."""
        fn = self.files.get_file_list_func
        try:
            files = self._fn("get_file_list")(input_path)
        except Exception as exc:
            raise TaskConfigError(f"{self.config_file}: {fn}({input_path!r}) raised {_describe_error(exc)}") from exc
        if isinstance(files, str | Path) or not isinstance(files, list | tuple):
            raise TaskConfigError(
                f"{self.config_file}: {fn} must return a list of file paths, got {type(files).__name__}"
            )
        out: list[str] = []
        for i, f in enumerate(files):
            if not isinstance(f, str | Path):
                raise TaskConfigError(
                    f"{self.config_file}: {fn} returned {type(f).__name__} at position {i}; expected a file path string"
                )
            if not Path(f).is_file():
                raise TaskConfigError(
                    f"{self.config_file}: {fn} returned {str(f)!r}, which is not a file "
                    f"(input_path={input_path!r}; set --input_path / LLM_INFER_INPUT_PATH?)"
                )
            out.append(str(f))
        if len(set(out)) != len(out):
            raise TaskConfigError(f"{self.config_file}: {fn} returned the same file twice")
        return out

    def read_rows(self, file_path: str) -> list[dict[str, Any]]:
        """``read_file(file_path)``, checked to be a list of dicts."""
        fn = self.files.read_file_func
        try:
            rows = self._fn("read_file")(file_path)
        except Exception as exc:
            if (self.is_openai_batch or self.is_yaml) and isinstance(exc, TaskConfigError):
                raise  # it names the file already
            raise TaskConfigError(f"{self.config_file}: {fn}({file_path!r}) raised {_describe_error(exc)}") from exc
        if not isinstance(rows, list):
            raise TaskConfigError(
                f"{self.config_file}: {fn}({file_path!r}) must return a list of dicts, got {type(rows).__name__}"
            )
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise TaskConfigError(
                    f"{self.config_file}: {fn}({file_path!r}) returned a {type(row).__name__} "
                    f"at row {i}; every row must be a dict"
                )
        bad = first_unencodable(rows)
        if bad is not None:
            i, problem = bad
            raise TaskConfigError(
                f"{self.config_file}: {fn}({file_path!r}) returned row {i}, which JSON cannot encode "
                f"({problem}); {JSON_HINT}"
            )
        return rows

    def format_prompt(self, row: dict[str, Any]) -> str | Messages | RowPrompt:
        """``format_prompt(row)``: text, chat messages, or (from a dict) a :class:`RowPrompt`.

        Raises ValueError on a bad return value (that row's error) and :class:`RowSamplingError` on a dict
        whose ``"sampling_params"`` are not valid (its shard's failure).
        """
        prompt = self._fn("format_prompt")(row)
        if isinstance(prompt, str) or _is_messages(prompt):
            return prompt  # type: ignore[no-any-return]
        if isinstance(prompt, dict):
            return self._row_prompt(prompt)
        raise ValueError(f"{self.files.format_prompt_func} {_RETURNS}, got {type(prompt).__name__}")

    def _row_prompt(self, value: dict[Any, Any]) -> RowPrompt:
        fn = self.files.format_prompt_func
        unknown = [k for k in value if k not in ROW_PROMPT_KEYS]
        if unknown:
            raise ValueError(f"{fn} {_RETURNS}, got dict with the unknown key {unknown[0]!r}")
        if ("prompt" in value) == ("messages" in value):
            raise ValueError(f"{fn} returned a dict with {'both' if 'prompt' in value else 'neither'} of 'prompt' "
                             "and 'messages'; give exactly one")  # fmt: skip
        if "prompt" in value and not isinstance(value["prompt"], str):
            raise ValueError(f"{fn} returned a 'prompt' of type {type(value['prompt']).__name__}; it must be a str")
        if "messages" in value and not _is_messages(value["messages"]):
            raise ValueError(f"{fn} returned 'messages' that are not a list of {{'role': str, 'content': str}}")
        prompt: str | Messages = value["prompt"] if "prompt" in value else value["messages"]
        overrides = value.get("sampling_params")
        if overrides is None or overrides == {}:
            return RowPrompt(prompt)
        source = f'{self.config_file}: {fn} returned "sampling_params"'
        if not isinstance(overrides, dict):
            raise RowSamplingError(f"{source} of type {type(overrides).__name__}; it must be a dict of sampling keys")
        try:
            checked = validate_sampling_params(overrides, source)
            check_combination({**self.sampling_params, **checked}, source)
        except TaskConfigError as exc:
            raise RowSamplingError(str(exc)) from None
        return RowPrompt(prompt, checked)

    def extract_answer(self, response: str) -> Any:
        return self._fn("extract_answer")(response)

    def shard_rows(self, file_path: str) -> Sequence[dict[str, Any]]:
        """The file's rows for slicing into shards: ``read_rows``, or for a YAML task a window that reads only
        the rows sliced (its length is the file's row count)."""
        if self.is_yaml:
            window: Sequence[dict[str, Any]] = self.module.row_window(file_path)
            try:
                len(window)  # the file is readable now, or this file's shards fail here with its name
            except Exception as exc:
                raise TaskConfigError(f"{self.config_file}: reading {file_path} raised {_describe_error(exc)}") from exc
            return window
        return self.read_rows(file_path)

    def count_rows(self, file_path: str) -> int | None:
        """The file's row count without reading its rows, when the task can say it (a YAML task); else None."""
        fn = getattr(self.module, "count_rows", None) if self.is_yaml else None
        if fn is None:
            return None
        try:
            return int(fn(file_path))
        except Exception as exc:
            raise TaskConfigError(f"{self.config_file}: counting the rows of {file_path} raised "
                                  f"{_describe_error(exc)}") from exc  # fmt: skip

    def shard_digests(self, file_path: str, ranges: list[tuple[int, int]]) -> list[str]:
        """The data version of each row range of the file, made without read_file (tasks with count_rows)."""
        try:
            digests: list[str] = self.module.shard_digests(file_path, ranges)
        except Exception as exc:
            raise TaskConfigError(f"{self.config_file}: reading {file_path} raised {_describe_error(exc)}") from exc
        return digests

    @property
    def score(self) -> Callable[[Any, dict[str, Any]], Any] | None:
        """The task's ``score(answer, org_data)``, or None when the task file defines none (a seed folder)."""
        fn = getattr(self.module, SCORE_FUNCTION, None)
        return fn if callable(fn) else None


def resolve_task_folder(task_configs: str | Path, name: str, files: TaskFiles | None = None) -> Path:
    """The folder of task ``name``; refuses names that are not a plain folder name inside task_configs."""
    files = files or TaskFiles()
    config_file = files.task_config_fn
    root = Path(task_configs).resolve()
    if not root.is_dir():
        raise TaskConfigError(
            f"task config dir {str(task_configs)!r} does not exist: set --config_path or LLM_INFER_TASK_CONFIGS "
            "(an installed package ships no task folders; the examples are the source repository's task_configs/)"
        )
    if not TASK_NAME_RE.fullmatch(name) or name in (".", ".."):
        raise TaskConfigError(
            f"task name {name!r} is not a plain folder name (letters, digits, '_', '-', '.'); "
            f"pick one of: {', '.join(discover_tasks(root, files)) or '(none found)'}"
        )
    folder = (root / name).resolve()
    if folder.parent != root:
        raise TaskConfigError(f"task name {name!r} leaves the task config dir {root}")
    if not folder.is_dir():
        folder = _inline_folder(root, name, files) or folder  # a defs.yaml whose name attribute is the task's
    if (
        not (folder / config_file).is_file()
        and not is_openai_batch_folder(folder, files)
        and not is_yaml_folder(folder, files)
    ):
        flag = "" if config_file == CONFIG_FILE else " (--task_config_fn)"
        raise TaskConfigError(
            f"no task {name!r}: {folder / config_file}{flag} does not exist (nor {yaml_task.YAML_FILE} or "
            f"{openai_batch.REQUESTS_FILE}); "
            f"tasks in {root}: {', '.join(discover_tasks(root, files)) or '(none)'}"
        )
    return folder


def is_openai_batch_folder(folder: Path, files: TaskFiles | None = None) -> bool:
    """A folder holding a requests.jsonl and no task file nor task.yaml: the built-in OpenAI batch task."""
    config_file = (files or TaskFiles()).task_config_fn
    return (
        not (folder / config_file).is_file()
        and not (folder / yaml_task.YAML_FILE).is_file()
        and (folder / openai_batch.REQUESTS_FILE).is_file()
    )


def is_yaml_folder(folder: Path, files: TaskFiles | None = None) -> bool:
    """A folder holding a task.yaml (or a defs.yaml with the task inline) and no task file: a task without Python."""
    config_file = (files or TaskFiles()).task_config_fn
    if (folder / config_file).is_file():
        return False
    return (folder / yaml_task.YAML_FILE).is_file() or yaml_task.inline_attributes(folder) is not None


def _inline_name(folder: Path) -> str:
    """The task name of a defs.yaml with the task inline: its ``name`` attribute, else the folder's name."""
    name = (yaml_task.inline_attributes(folder) or {}).get("name")
    return name if isinstance(name, str) else folder.name


def discover_tasks(task_configs: str | Path, files: TaskFiles | None = None) -> list[str]:
    """Names of the task folders (those holding the task file, task_config.py by default), sorted."""
    config_file = (files or TaskFiles()).task_config_fn
    root = Path(task_configs)
    if not root.is_dir():
        return []
    return sorted(
        _inline_name(p) if _is_inline(p, files) else p.name
        for p in root.iterdir()
        if ((p / config_file).is_file() or is_openai_batch_folder(p, files) or is_yaml_folder(p, files))
        and TASK_NAME_RE.fullmatch(_inline_name(p) if _is_inline(p, files) else p.name)
    )


def _is_inline(folder: Path, files: TaskFiles | None = None) -> bool:
    """A folder whose defs.yaml carries the task inline (and no task.yaml beside it)."""
    return is_yaml_folder(folder, files) and not (folder / yaml_task.YAML_FILE).is_file()


def _inline_folder(root: Path, name: str, files: TaskFiles | None) -> Path | None:
    """The folder under ``root`` whose inline defs.yaml names the task ``name`` (its ``name`` attribute)."""
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if p.is_dir() and p.name != name and _is_inline(p, files) and _inline_name(p) == name:
            return p.resolve()
    return None


def _local_module_names(folder: Path, config_file: str) -> set[str]:
    names = {p.stem for p in folder.glob("*.py")} | {
        p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").is_file()
    }
    names.discard(Path(config_file).stem)
    return names


def _import_config(folder: Path, task_name: str, config_file: str = CONFIG_FILE) -> ModuleType:
    """Import the task file (task_config.py by default) under a per-task module name.

    Seed tasks may import helper modules that sit next to task_config.py (``import utils``). Two tasks can
    each have their own ``utils``, so those helpers are imported fresh for this task and then taken out of
    ``sys.modules`` again (the task module keeps its references), restoring whatever was there before.
    """
    path = folder / config_file
    module_name = f"llm_infer_task_{re.sub(r'[^A-Za-z0-9_]', '_', task_name)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TaskConfigError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    local = _local_module_names(folder, config_file)

    def is_local(name: str) -> bool:
        return name.split(".")[0] in local

    saved = {n: sys.modules.pop(n) for n in list(sys.modules) if is_local(n)}
    sys.modules[module_name] = module  # before exec: dataclasses and pickling look the module up
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise TaskConfigError(f"{path}: importing it raised {_describe_error(exc)}") from exc
    finally:
        if str(folder) in sys.path:
            sys.path.remove(str(folder))
        for n in [n for n in sys.modules if is_local(n)]:
            del sys.modules[n]
        sys.modules.update(saved)
    return module


def _check_functions(module: ModuleType, path: Path, files: TaskFiles) -> None:
    used = files.functions
    missing = [role for role, fn in used.items() if not callable(getattr(module, fn, None))]
    if missing:
        renamed = any(used[r] != r for r in missing)
        raise TaskConfigError(
            f"{path}: missing function(s) {', '.join(used[r] for r in missing)}; a task must define "
            + ", ".join(f"{fn}(...)" for fn in used.values())
            + (" (names set by --<role>_func: " + ", ".join(f"{r}={used[r]}" for r in missing) + ")" if renamed else "")
        )
    for fn in used.values():
        try:
            inspect.signature(getattr(module, fn)).bind(object())
        except TypeError:
            raise TaskConfigError(f"{path}: {fn} must take exactly one argument") from None
        except ValueError:  # builtins without signatures: trust them
            continue
    _check_score(module, path)


def _check_score(module: ModuleType, path: Path) -> None:
    """An optional ``score`` must be a function of (answer, org_data): said at load, not on the first row."""
    fn = getattr(module, SCORE_FUNCTION, None)
    if fn is None:
        return
    fix = f"define {SCORE_FUNCTION}(answer, org_data) returning a number (or None), or rename it"
    if not callable(fn):
        raise TaskConfigError(f"{path}: {SCORE_FUNCTION} is a {type(fn).__name__}, not a function; {fix}")
    try:
        inspect.signature(fn).bind(object(), object())
    except TypeError:
        raise TaskConfigError(
            f"{path}: {SCORE_FUNCTION} must take exactly two arguments (answer, org_data); {fix}"
        ) from None
    except ValueError:  # builtins without signatures: trust them
        pass


def load_task(task_configs: str | Path, name: str, files: TaskFiles | None = None) -> TaskConfig:
    """Load and validate a task folder. Fails before any data is read or any model is loaded.

    ``files``: the task file, sampling file and function names to use (the seed's flags; default: the seed's).
    """
    files = files or TaskFiles()
    folder = resolve_task_folder(task_configs, name, files)
    if is_yaml_folder(folder, files):
        return _load_yaml(task_configs, name, folder)
    if is_openai_batch_folder(folder, files):
        return _load_openai_batch(name, folder)
    module = _import_config(folder, name, files.task_config_fn)
    _check_functions(module, folder / files.task_config_fn, files)
    sampling = load_sampling_params(Path(task_configs) / DEFAULTS_FILE, folder / files.sampling_params_fn)
    return TaskConfig(
        name=name,
        folder=folder,
        module=module,
        sampling_params=sampling,
        settings=load_task_settings(folder),
        files=files,
    )


def _load_openai_batch(name: str, folder: Path) -> TaskConfig:
    """The built-in OpenAI batch task on ``folder``: the seed's own names, OpenAI's sampling defaults, and the
    folder's requests.jsonl as the input unless task_settings.json (or --input_path) names another."""
    files = TaskFiles()  # the package's functions: the seed's renaming flags are for task files
    sampling = load_sampling_params(None, folder / files.sampling_params_fn, builtin=openai_batch.BASE_SAMPLING)
    settings = load_task_settings(folder)
    if settings.input_path is None:
        settings = settings.model_copy(update={"input_path": str(folder / openai_batch.REQUESTS_FILE)})
    requests = folder / openai_batch.REQUESTS_FILE
    if settings.task == "generate" and requests.is_file() and openai_batch.task_kind(requests) == "embed":
        settings = settings.model_copy(update={"task": "embed"})  # /v1/embeddings requests: the embed task
    return TaskConfig(
        name=name, folder=folder, module=openai_batch, sampling_params=sampling, settings=settings, files=files,
        is_openai_batch=True,
    )  # fmt: skip


def _load_yaml(task_configs: str | Path, name: str, folder: Path) -> TaskConfig:
    """A task without Python: task.yaml's functions, its dataset as the input unless task_settings.json (or
    --input_path) names another, and its ``sampling`` over the folder's and the defaults' sampling parameters."""
    inline = _is_inline(folder)
    if inline:  # the LLMInferComponent's inline form: the fields are its defs.yaml's attributes
        spec, file, prefix = yaml_task.load_inline(folder), folder / yaml_task.DEFS_FILE, "attributes."
        declared = _inline_name(folder)
        if not TASK_NAME_RE.fullmatch(declared):
            raise TaskConfigError(
                f"{file}: attributes.name {declared!r} is not a plain task name (letters, digits, '_', '-', '.'); "
                "give one like 'arith_qa'"
            )
        if declared != name:
            raise TaskConfigError(f"{file}: attributes.name names the task {declared!r}; load it by that name, "
                                  f"not {name!r}")  # fmt: skip
    else:
        spec, file, prefix = yaml_task.load_task_yaml(folder), folder / yaml_task.YAML_FILE, ""
    module = yaml_task.build_module(folder, name, spec, file, prefix)
    files = TaskFiles()  # the package's functions: the seed's renaming flags are for task files
    sampling = load_sampling_params(Path(task_configs) / DEFAULTS_FILE, folder / files.sampling_params_fn)
    if spec.sampling:
        source = f"{file}: {prefix}sampling"
        sampling = {**sampling, **validate_sampling_params(spec.sampling, source)}
        check_combination(sampling, source)
    settings = load_task_settings(folder)
    kind = (yaml_task.inline_attributes(folder) or {}).get("task") if inline else None
    if kind is not None:  # the Component's task attribute: llm-infer over the defs folder does the same
        if kind not in TASK_KINDS:
            raise TaskConfigError(f"{file}: attributes.task is {kind!r}; give one of {', '.join(TASK_KINDS)}")
        settings = settings.model_copy(update={"task": kind})
    local = (folder / spec.dataset.path).resolve()
    if settings.input_path is None and local.exists():  # a hub dataset's files are in the HF cache: None
        settings = settings.model_copy(update={"input_path": str(local)})
    return TaskConfig(
        name=name, folder=folder, module=module, sampling_params=sampling, settings=settings, files=files,
        is_yaml=True,
    )  # fmt: skip


#: How to fix a row or an answer that JSON cannot encode; ends the one-line messages that report one.
JSON_HINT = "return JSON-compatible values: str, int, float, bool, None, list, dict with str keys"
_KEY_TYPES = (str, int, float, bool)
_CHECK_CHUNK = 1024  # rows encoded per json.dumps call when checking a file's rows


def _fallback(value: Any) -> str:
    """str() for values JSON cannot hold (dates, sets, Decimal); refuses objects without their own str/repr.

    Their default text (``<Foo object at 0x7f...>``) changes from run to run: it would make every re-read
    row look edited and every answer useless, so such a value is an error, not a string.
    """
    kind: type[object] = type(value)
    if kind.__str__ is object.__str__ and kind.__repr__ is object.__repr__:
        raise TypeError(f"Object of type {kind.__name__} is not JSON serializable and has no str() of its own")
    return str(value)


def to_json(value: Any) -> str:
    """JSON for a row or an answer; values JSON cannot hold (dates, sets) fall back to str(), NaN stays NaN.

    Raises TypeError / ValueError for what cannot be encoded (non-str keys such as tuples, objects with
    no str() of their own, circular references): :func:`json_problem` says where.
    """
    return json.dumps(value, ensure_ascii=False, default=_fallback)


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _encodes(value: Any) -> bool:
    try:
        to_json(value)
    except Exception:
        return False
    return True


def json_problem(value: Any, where: str = "value") -> str | None:
    """What in ``value`` JSON cannot encode, with its place (``row['meta'][2] is a Foo ...``); None if it can.

    Only walks into the containers that fail, so it is cheap next to the failed encode that calls it.
    """
    if _encodes(value):
        return None
    return _locate(value, where, set())


def _locate(value: Any, where: str, seen: set[int]) -> str:
    if isinstance(value, dict | list | tuple):
        if id(value) in seen:
            return f"{where} is a circular reference (a container inside itself)"
        seen.add(id(value))
    if isinstance(value, dict):
        for k, v in value.items():
            if k is not None and not isinstance(k, _KEY_TYPES):
                return f"{where} has a key {_one_line(repr(k), 60)} of type {type(k).__name__}"
            if not _encodes(v):
                return _locate(v, f"{where}[{_one_line(repr(k), 60)}]", seen)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            if not _encodes(v):
                return _locate(v, f"{where}[{i}]", seen)
    try:
        to_json(value)
    except Exception as exc:
        return f"{where} is of type {type(value).__name__} ({_one_line(_describe_error(exc))})"
    return f"{where} cannot be encoded"  # pragma: no cover - only if encoding is not deterministic


def first_unencodable(rows: list[Any]) -> tuple[int, str] | None:
    """The first row JSON cannot encode and what is wrong with it, or None. Encodes rows in chunks (C speed)."""
    for start in range(0, len(rows), _CHECK_CHUNK):
        chunk = rows[start : start + _CHECK_CHUNK]
        if _encodes(chunk):
            continue
        for i, row in enumerate(chunk, start):
            problem = json_problem(row, "row")
            if problem is not None:
                return i, problem
    return None
