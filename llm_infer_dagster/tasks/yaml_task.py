"""A task without Python: a folder holding ``task.yaml`` (a dataset, a Jinja2 prompt, an answer regex, a score).

::

    dataset:
      path: data            # a file or folder of Parquet / JSONL / CSV files, relative to the task folder
      split: train          # optional: only files in a folder named so, or whose name starts with it
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
file's row count from its footer and digests shards in polars (Rust), never calling ``read_file`` (a Python
dict per row) on the whole file.

Rows are read with polars. A ``datasets.save_to_disk`` folder and hub dataset names are not read yet: both
are refused with a one-line message (export to Parquet: ``ds.to_parquet(...)``).

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

import polars as pl
import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llm_infer_dagster.errors import TaskConfigError

__all__ = ["DATA_SUFFIXES", "YAML_FILE", "TaskYaml", "build_module", "load_task_yaml"]

#: The file that makes a folder a YAML task folder.
YAML_FILE = "task.yaml"
#: File suffix -> polars format name. A folder's files of other suffixes are ignored.
DATA_SUFFIXES = {".parquet": "parquet", ".jsonl": "ndjson", ".ndjson": "ndjson", ".csv": "csv"}
#: Rows per polars read when digesting shards: bounds memory whatever the file's size.
DIGEST_BLOCK_ROWS = 65_536


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Strict):
    path: str = Field(description="a file or folder of Parquet / JSONL / CSV files, relative to the task folder")
    split: str | None = Field(default=None, description="only files under a folder of this name or named after it")
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


def _describe(exc: ValidationError, source: Path) -> str:
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a misspelt key says most
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p in ("str", "list[Message]"))]
    key = ".".join(str(p) for p in loc) or "(top level)"
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
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise TaskConfigError(f"{source}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise TaskConfigError(
            f"{source}: must be a mapping with dataset, prompt and optionally answer, score, sampling"
        )
    try:
        spec = TaskYaml.model_validate(data)
    except ValidationError as exc:
        raise TaskConfigError(_describe(exc, source)) from None
    if spec.answer.regex is not None:
        try:
            re.compile(spec.answer.regex)
        except re.error as exc:
            raise TaskConfigError(
                f"{source}: answer.regex {spec.answer.regex!r} is not a valid regular expression ({exc})"
            ) from None
    return spec


# -- the dataset --------------------------------------------------------------------------------------------------


def _is_save_to_disk(path: Path) -> bool:
    return path.is_dir() and (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def _format(path: str | Path) -> str:
    return DATA_SUFFIXES[Path(path).suffix.lower()]


def list_data_files(root: Path, split: str | None, source: Path) -> list[str]:
    """The data files under ``root`` (itself when it is a file), sorted; refuses what it cannot read."""
    if _is_save_to_disk(root):
        raise TaskConfigError(
            f"{source}: dataset.path {str(root)!r} is a datasets.save_to_disk folder, which is not read yet; "
            "export it to Parquet (ds.to_parquet('data/train.parquet')) and name that"
        )
    if root.is_file():
        if root.suffix.lower() not in DATA_SUFFIXES:
            raise TaskConfigError(f"{source}: dataset.path {str(root)!r} is not a {' / '.join(DATA_SUFFIXES)} file")
        return [str(root)]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    if split is not None:
        files = [
            p for p in files
            if split in p.relative_to(root).parts[:-1] or re.match(rf"{re.escape(split)}([-_.]|$)", p.name)
        ]  # fmt: skip
    if not files:
        which = f" of split {split!r}" if split else ""
        raise TaskConfigError(f"{source}: dataset.path {str(root)!r} holds no {' / '.join(DATA_SUFFIXES)} files{which}")
    return [str(p) for p in files]


def _scan(path: str) -> pl.LazyFrame:
    kind = _format(path)
    if kind == "parquet":
        return pl.scan_parquet(path)
    if kind == "ndjson":
        return pl.scan_ndjson(path)
    return pl.scan_csv(path)


def schema_columns(path: str) -> list[str]:
    """A file's column names, from its metadata (Parquet) or its first rows (JSONL, CSV)."""
    return list(_scan(path).collect_schema().names())


def count_rows(path: str) -> int:
    """Rows in a file without making them: a Parquet file's footer; a Rust line scan for JSONL and CSV."""
    return int(_scan(path).select(pl.len()).collect().item())


def _digest_frame(frame: pl.DataFrame, start: int, stop: int) -> str:
    h = hashlib.sha256(f"{start}:{stop}:".encode())
    if frame.height:
        h.update(frame.write_ndjson().encode())
    return h.hexdigest()[:24]


def shard_digests(path: str, ranges: Sequence[tuple[int, int]], columns: Sequence[str] | None = None) -> list[str]:
    """The data version of each ``[start, stop)`` of the file: a digest of its rows' JSON lines, made in polars.

    Reads the file in blocks of :data:`DIGEST_BLOCK_ROWS` rows, so memory stays bounded on a large file.
    """
    lf = _scan(path)
    if columns:
        lf = lf.select(columns)
    out: list[str] = []
    block: tuple[int, pl.DataFrame] | None = None
    for start, stop in ranges:
        if stop - start > DIGEST_BLOCK_ROWS or start >= stop:
            out.append(_digest_frame(lf.slice(start, max(stop - start, 0)).collect(), start, stop))
            continue
        if block is None or not (block[0] <= start and stop <= block[0] + DIGEST_BLOCK_ROWS):
            block = (start, lf.slice(start, DIGEST_BLOCK_ROWS).collect())
        out.append(_digest_frame(block[1].slice(start - block[0], stop - start), start, stop))
    return out


class RowWindow(Sequence[dict[str, Any]]):
    """A file's rows, read only where sliced: its length is the file's row count, a slice reads just those rows.

    What the raw step reads a shard's rows through, so a shard of a 10M-row Parquet file costs its own rows,
    not the file's (``TaskConfig.shard_rows``).
    """

    def __init__(self, path: str, columns: Sequence[str] | None) -> None:
        self.path, self.columns = path, list(columns) if columns else None
        self._len: int | None = None

    def __len__(self) -> int:
        if self._len is None:
            self._len = count_rows(self.path)
        return self._len

    def __getitem__(self, index: Any) -> Any:
        if not isinstance(index, slice):
            return self[index : index + 1][0] if index >= 0 else self[len(self) + index]
        start, stop, step = index.indices(len(self))
        lf = _scan(self.path)
        lf = lf.select(self.columns) if self.columns else lf
        rows = lf.slice(start, max(stop - start, 0)).collect().to_dicts()
        return rows[::step]


# -- the task's functions -----------------------------------------------------------------------------------------


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _template_texts(spec: TaskYaml) -> list[tuple[str, str]]:
    """(where, template text) of every template in the prompt."""
    if isinstance(spec.prompt, str):
        return [("prompt", spec.prompt)]
    return [(f"prompt[{i}].content", t) for i, m in enumerate(spec.prompt) for t in _strings(m.content)]


def _template_columns(spec: TaskYaml, source: Path) -> tuple[list[Any], set[str]]:
    """The compiled templates (one, or one per message) and the variables they read from the row."""
    texts = _template_texts(spec)
    compiled: list[Any] = []
    names: set[str] = set()
    for key, text in texts:
        try:
            names |= meta.find_undeclared_variables(_ENV.parse(text))
            compiled.append(_ENV.from_string(text))
        except TemplateSyntaxError as exc:
            raise TaskConfigError(
                f"{source}: {key} is not a valid Jinja2 template (template line {exc.lineno}: {exc.message})"
            ) from None
    return compiled, names


def _check_columns(spec: TaskYaml, names: set[str], first_file: str, source: Path) -> None:
    have = schema_columns(first_file)
    if spec.dataset.columns:
        missing = [c for c in spec.dataset.columns if c not in have]
        if missing:
            raise TaskConfigError(_no_column(source, "dataset.columns", missing[0], have, first_file))
        have = list(spec.dataset.columns)
    for name in sorted(names - {"row"}):
        if name not in have:
            raise TaskConfigError(_no_column(source, "prompt", name, have, first_file))
    if spec.score is not None and spec.score.column not in have:
        raise TaskConfigError(_no_column(source, "score.column", spec.score.column, have, first_file))


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


def build_module(folder: Path, name: str, spec: TaskYaml | None = None) -> ModuleType:
    """The task's module: ``get_file_list``, ``read_file``, ``format_prompt``, ``extract_answer`` (and
    ``score``), plus ``count_rows`` and ``shard_digests``; checks the dataset and its columns first."""
    source = folder / YAML_FILE
    spec = spec or load_task_yaml(folder)
    root = (folder / spec.dataset.path).resolve()
    if not root.exists():
        raise TaskConfigError(
            f"{source}: dataset.path {spec.dataset.path!r} does not exist ({root}); give a file or folder of "
            f"{' / '.join(DATA_SUFFIXES)} files, relative to the task folder"
        )
    templates, names = _template_columns(spec, source)
    files = list_data_files(root, spec.dataset.split, source)
    _check_columns(spec, names, files[0], source)
    columns = list(spec.dataset.columns) if spec.dataset.columns else None
    regex = re.compile(spec.answer.regex) if spec.answer.regex is not None else None
    impl = inspect.getsource(build_module)  # this code's own changes count too

    def get_file_list(input_path: str | None) -> list[str]:
        given = Path(input_path) if input_path else root
        return list_data_files(given.resolve(), spec.dataset.split, source)

    def read_file(file_path: str) -> list[dict[str, Any]]:
        lf = _scan(file_path)
        rows: list[dict[str, Any]] = (lf.select(columns) if columns else lf).collect().to_dicts()
        return rows

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
