"""A task without Python: a folder holding ``task.yaml`` (a dataset, a Jinja2 prompt, an answer regex, a score).

::

    dataset:
      path: data            # Parquet / JSONL / CSV file or folder, a datasets.save_to_disk folder (relative to
                            # the task folder), or a hub dataset owner/name
      split: train          # optional: only files in a folder named so, or whose name starts with it; a
                            # DatasetDict's or hub dataset's split
      name: main            # optional: a hub dataset's config
      columns: [question, gold]   # optional: the columns a row keeps
    prompt: "How much is {{ question }}? Answer with a number."   # or a list of {role, content} messages
    answer:
      regex: "-?\\d+"       # optional: the first match (its group 1 when it has groups); else the whole text
    score: {column: gold, match: exact}    # or {column: gold, tolerance: 1e-6}; optional
    sampling: {max_tokens: 16}             # optional: over default_sampling_params.json and sampling_params.json

:func:`build_module` turns it into a module with the seed's four functions (and ``score``), so the loader
makes the same :class:`~llm_infer_dagster.tasks.loader.TaskConfig` as for a Python task folder, and shards,
assets and the CLI work unchanged. Each function carries a ``__fingerprint__`` of the YAML section it is made
from (``tasks/versions.py`` uses it in place of its source), so a changed template makes prompts stale and a
changed regex only answers.

The module also has ``count_rows(path)`` and ``shard_digests(path, ranges)``: registration reads a Parquet
file's row count from its footer (an Arrow file's from its batch headers) and digests shards in polars (Rust),
never calling ``read_file`` (a Python dict per row) on the whole file. Reading the dataset, whatever its kind,
is ``tasks/datasets_io.py``.

The same fields may sit inline in a ``defs.yaml`` of the ``LLMInferComponent`` (its ``attributes``): the folder
holding that ``defs.yaml`` is then the task folder (:func:`inline_attributes`), and the functions and their
fingerprints are the same as from a ``task.yaml`` with the same fields.

Everything wrong with the file is refused at load, before any model loads, in one line naming the file and
key: unknown keys (with the closest valid one), YAML or Jinja2 syntax, a regex that does not compile, a dataset
path that does not exist, a column the template or score names that the dataset does not have.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.tasks.datasets_io import (
    DATA_SUFFIXES,
    RowWindow,
    count_rows,
    hub_files,
    is_hub_name,
    list_data_files,
    read_rows,
    schema_columns,
    shard_digests,
)

__all__ = ["DEFS_FILE", "TASK_KEYS", "YAML_FILE", "TaskYaml", "build_module", "inline_attributes", "load_task_yaml"]

#: The file that makes a folder a YAML task folder.
YAML_FILE = "task.yaml"
#: A Dagster component's file: with the task's fields inline in its attributes, its folder is a task folder.
DEFS_FILE = "defs.yaml"
#: The component type whose defs.yaml may carry the task inline.
COMPONENT_TYPE = "llm_infer_dagster.LLMInferComponent"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Strict):
    path: str = Field(
        description="a Parquet / JSONL / CSV file or folder or a datasets.save_to_disk folder (relative to the task "
        "folder), or a hub dataset's owner/name"
    )
    split: str | None = Field(
        default=None, description="only files under a folder of this name or named after it; a DatasetDict's split"
    )
    name: str | None = Field(default=None, description="a hub dataset's config name")
    columns: list[str] | None = Field(default=None, description="the columns each row keeps (default: all)")


class Message(_Strict):
    role: str
    #: text, or OpenAI-style parts: [{type: text, text: ...}, {type: image_url, image_url: {url: "{{ image }}"}}]
    content: str | list[dict[str, Any]]


def _strings(value: Any) -> list[str]:
    """Every string inside a message's content (each is a template)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _fill(value: Any, templates: dict[str, Any], context: dict[str, Any]) -> Any:
    """``value`` with each string rendered by its template."""
    if isinstance(value, str):
        return str(templates[value].render(context))
    if isinstance(value, dict):
        return {k: _fill(v, templates, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, templates, context) for v in value]
    return value


class AnswerSpec(_Strict):
    regex: str | None = Field(default=None, description="the answer is its first match (group 1 if it has one)")


class ScoreSpec(_Strict):
    column: str = Field(description="the row's column holding the gold answer")
    match: Literal["exact"] | None = Field(default=None, description="1.0 when the answer equals the gold text")
    tolerance: float | None = Field(default=None, ge=0, description="1.0 when |answer - gold| <= tolerance")

    @model_validator(mode="after")
    def _one_rule(self) -> ScoreSpec:
        if (self.match is None) == (self.tolerance is None):
            raise ValueError("give exactly one of match: exact or tolerance: <number>")
        return self


class TaskYaml(_Strict):
    """The content of task.yaml."""

    dataset: DatasetSpec
    prompt: str | list[Message]
    answer: AnswerSpec = Field(default_factory=AnswerSpec)
    score: ScoreSpec | None = None
    sampling: dict[str, Any] | None = None


#: The keys of task.yaml: what a defs.yaml may carry inline instead of naming a task folder.
TASK_KEYS = tuple(TaskYaml.model_fields)
_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def _fields(model: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    """The valid keys at ``path`` inside TaskYaml (for 'did you mean')."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        is_model = isinstance(current, type) and issubclass(current, BaseModel)
        field = current.model_fields.get(part) if is_model else None
        if field is None:
            return []
        current = _model_in(field.annotation)
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _describe(exc: ValidationError, source: Path, prefix: str = "") -> str:
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a misspelt key says most
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p in ("str", "list[Message]"))]
    key = prefix + ".".join(str(p) for p in loc) if loc else prefix.rstrip(".") or "(top level)"
    if err["type"] == "extra_forbidden":
        valid = _fields(TaskYaml, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys here: {', '.join(valid)}"
        return f"{source}: unknown key {key!r}; {hint}"
    if err["type"] == "missing":
        return f"{source}: {key} is missing; see docs/task-folders.md#tasks-without-python"
    return f"{source}: {key}: {err['msg']}"


def load_task_yaml(folder: Path) -> TaskYaml:
    """Parse and validate ``folder/task.yaml``; TaskConfigError naming the file and key on anything wrong."""
    source = folder / YAML_FILE
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TaskConfigError(_yaml_error(source, exc)) from None
    if not isinstance(data, dict):
        raise TaskConfigError(
            f"{source}: must be a mapping with dataset, prompt and optionally answer, score, sampling"
        )
    return parse_task(data, source)


def _yaml_error(source: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark is not None else ""
    return f"{source}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})"


def parse_task(data: dict[str, Any], source: Path, prefix: str = "") -> TaskYaml:
    """Validate task.yaml's fields (``prefix``: where they sit in the file, e.g. ``attributes.``)."""
    try:
        spec = TaskYaml.model_validate(data)
    except ValidationError as exc:
        raise TaskConfigError(_describe(exc, source, prefix)) from None
    if spec.answer.regex is not None:
        try:
            re.compile(spec.answer.regex)
        except re.error as exc:
            raise TaskConfigError(
                f"{source}: {prefix}answer.regex {spec.answer.regex!r} is not a valid regular expression ({exc})"
            ) from None
    return spec


def inline_attributes(folder: Path) -> dict[str, Any] | None:
    """The attributes of ``folder/defs.yaml`` when it declares an LLMInferComponent with the task inline
    (``dataset`` or ``prompt`` among them); else None. Read as written: no Dagster templating."""
    path = folder / DEFS_FILE
    if not path.is_file():
        return None
    try:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError):
        return None  # not ours to report: Dagster says what is wrong with its file
    for doc in docs:
        if isinstance(doc, dict) and doc.get("type") == COMPONENT_TYPE and isinstance(doc.get("attributes"), dict):
            attributes: dict[str, Any] = doc["attributes"]
            if "dataset" in attributes or "prompt" in attributes:
                return attributes
    return None


def load_inline(folder: Path) -> TaskYaml:
    """The task declared inline in ``folder/defs.yaml``; errors name the file and ``attributes.<key>``."""
    attributes = inline_attributes(folder) or {}
    return parse_task({k: v for k, v in attributes.items() if k in TASK_KEYS}, folder / DEFS_FILE, "attributes.")


# -- the task's functions -----------------------------------------------------------------------------------------


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _template_texts(spec: TaskYaml) -> list[tuple[str, str]]:
    """(where, template text) of every template in the prompt."""
    if isinstance(spec.prompt, str):
        return [("prompt", spec.prompt)]
    return [(f"prompt[{i}].content", t) for i, m in enumerate(spec.prompt) for t in _strings(m.content)]


def _template_columns(spec: TaskYaml, source: Path, prefix: str = "") -> tuple[list[Any], set[str]]:
    """The compiled templates (one, or one per message) and the variables they read from the row."""
    texts = _template_texts(spec)
    compiled: list[Any] = []
    names: set[str] = set()
    for where, text in texts:
        key = prefix + where
        try:
            names |= meta.find_undeclared_variables(_ENV.parse(text))
            compiled.append(_ENV.from_string(text))
        except TemplateSyntaxError as exc:
            raise TaskConfigError(
                f"{source}: {key} is not a valid Jinja2 template (template line {exc.lineno}: {exc.message})"
            ) from None
    return compiled, names


def _check_columns(spec: TaskYaml, names: set[str], first_file: str, source: Path, prefix: str = "") -> None:
    have = schema_columns(first_file)
    if spec.dataset.columns:
        missing = [c for c in spec.dataset.columns if c not in have]
        if missing:
            raise TaskConfigError(_no_column(source, prefix + "dataset.columns", missing[0], have, first_file))
        have = list(spec.dataset.columns)
    for name in sorted(names - {"row"}):
        if name not in have:
            raise TaskConfigError(_no_column(source, prefix + "prompt", name, have, first_file))
    if spec.score is not None and spec.score.column not in have:
        raise TaskConfigError(_no_column(source, prefix + "score.column", spec.score.column, have, first_file))


def _no_column(source: Path, key: str, name: str, have: list[str], file: str) -> str:
    close = difflib.get_close_matches(name, have, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{source}: {key} names column {name!r}, which {file} does not have (columns: {', '.join(have)}){hint}"


def _number(value: Any) -> float | None:
    try:
        x = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _mark(fn: Callable[..., Any], fingerprint: str) -> Callable[..., Any]:
    fn.__fingerprint__ = fingerprint  # type: ignore[attr-defined]
    return fn


def dataset_files(folder: Path, spec: TaskYaml, source: Path, prefix: str = "") -> tuple[list[str], Path | None]:
    """The dataset's files, and its local root (None for a hub dataset, whose files are in the HF cache)."""
    ds = spec.dataset
    root = (folder / ds.path).resolve()
    if root.exists():
        if ds.name is not None:
            raise TaskConfigError(
                f"{source}: {prefix}dataset.name {ds.name!r} is a hub dataset's config, but {prefix}dataset.path "
                f"{ds.path!r} is the local {root}; remove name"
            )
        return list_data_files(root, ds.split, source, prefix), root
    if is_hub_name(ds.path) and not (folder / ds.path.split("/")[0]).exists():  # data/x.parquet is a local path
        return hub_files(ds.path, ds.name, ds.split, source, root, prefix), None
    raise TaskConfigError(
        f"{source}: {prefix}dataset.path {ds.path!r} does not exist ({root}); give a file or folder of "
        f"{' / '.join(DATA_SUFFIXES)} files or a datasets.save_to_disk folder, relative to the task folder, or a "
        "hub dataset owner/name"
    )


def build_module(
    folder: Path, name: str, spec: TaskYaml | None = None, source: Path | None = None, prefix: str = ""
) -> ModuleType:
    """The task's module: ``get_file_list``, ``read_file``, ``format_prompt``, ``extract_answer`` (and
    ``score``), plus ``count_rows`` and ``shard_digests``; checks the dataset and its columns first.

    ``source``: the file the fields come from (default ``folder/task.yaml``), ``prefix``: where they sit in it.
    """
    source = source or folder / YAML_FILE
    spec = spec or load_task_yaml(folder)
    templates, names = _template_columns(spec, source, prefix)
    files, root = dataset_files(folder, spec, source, prefix)
    _check_columns(spec, names, files[0], source, prefix)
    columns = list(spec.dataset.columns) if spec.dataset.columns else None
    regex = re.compile(spec.answer.regex) if spec.answer.regex is not None else None
    impl = inspect.getsource(build_module)  # this code's own changes count too

    def get_file_list(input_path: str | None) -> list[str]:
        if not input_path and root is None:
            return list(files)  # a hub dataset: its files in the HF cache
        given = Path(input_path) if input_path else root
        assert given is not None
        return list_data_files(given.resolve(), spec.dataset.split, source, prefix)

    def read_file(file_path: str) -> list[dict[str, Any]]:
        return read_rows(file_path, columns)

    by_text = {text: t for (_, text), t in zip(_template_texts(spec), templates, strict=True)}

    def format_prompt(row: dict[str, Any]) -> str | list[dict[str, Any]]:
        if isinstance(spec.prompt, str):
            return str(templates[0].render({"row": row, **row}))
        return [{"role": m.role, "content": _fill(m.content, by_text, {"row": row, **row})} for m in spec.prompt]

    def extract_answer(response: str) -> str | None:
        if regex is None:
            return response.strip()
        found = regex.search(response)
        if found is None:
            return None
        return found.group(1) if regex.groups else found.group(0)

    def digests(path: str, ranges: Sequence[tuple[int, int]]) -> list[str]:
        return shard_digests(path, ranges, columns)

    module = ModuleType(f"llm_infer_yaml_task_{re.sub(r'[^A-Za-z0-9_]', '_', name)}")
    module.__file__ = str(source)
    data = spec.dataset.model_dump()
    module.get_file_list = _mark(get_file_list, _fingerprint("files", data, impl))  # type: ignore[attr-defined]
    module.read_file = _mark(read_file, _fingerprint("read", data, impl))  # type: ignore[attr-defined]
    prompt = spec.model_dump()["prompt"]
    module.format_prompt = _mark(format_prompt, _fingerprint("prompt", prompt, impl))  # type: ignore[attr-defined]
    answer = spec.answer.model_dump()
    module.extract_answer = _mark(extract_answer, _fingerprint("answer", answer, impl))  # type: ignore[attr-defined]
    if not (isinstance(spec.prompt, list) and any(not isinstance(m.content, str) for m in spec.prompt)):
        # Rows counted and digested without read_file; a prompt with parts (images) is digested from its rows,
        # whose versions cover the content of the images they name (tasks/images.py)
        module.count_rows = count_rows  # type: ignore[attr-defined]
        module.shard_digests = digests  # type: ignore[attr-defined]
    module.row_window = lambda path: RowWindow(path, columns)  # type: ignore[attr-defined]
    module.SPEC = spec  # type: ignore[attr-defined]
    if spec.score is not None:
        rule = spec.score

        def score(answer: Any, org_data: dict[str, Any]) -> float:
            gold = org_data.get(rule.column)
            if answer is None:
                return 0.0
            if rule.tolerance is not None:
                a, g = _number(answer), _number(gold)
                return float(a is not None and g is not None and abs(a - g) <= rule.tolerance)
            return float(str(answer).strip() == str(gold).strip())

        module.score = _mark(score, _fingerprint("score", rule.model_dump(), impl))  # type: ignore[attr-defined]
    return module
