"""Code versions: a fingerprint of exactly what determines each asset's output, so Dagster marks the
right shards stale when a task's code, prompt files, sampling parameters or model change.

- raw:          ``get_file_list`` and ``read_file``
- prompts:      raw's, plus ``format_prompt`` and the task folder's prompt files (templates it reads)
- completions:  prompts', plus the merged sampling parameters, the model identity (path + weights) and the
                engine settings that change outputs (dtype, context length, ``--max_input_length``); for a
                LoRA adapter also the content of its files, so new adapter weights make only its shards stale
- answers:      completions', plus ``extract_answer`` (and ``score``, when the task defines one; with ``n`` > 1
                also :data:`SAMPLED_ANSWERS`, the version of the pass@k / maj@n columns)

Each role's fingerprint is of the function actually used for it (the seed's ``--*_func`` flags may name
another), so pointing ``--format_prompt_func`` at another function makes prompts and what follows stale.

A function's fingerprint covers its own source and, transitively, the module-level helpers of the same
task file it calls by name, so editing a helper of ``format_prompt`` still counts. A function that carries a
``__fingerprint__`` string (a task without Python: ``tasks/yaml_task.py``) is fingerprinted by it instead: its
source is the same for every task, the YAML section it is made from is not. Such a task's ``task.yaml`` is
not one of its prompt files (its prompt is already in ``format_prompt``'s fingerprint; a changed regex must
not make prompts stale).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

from llm_infer_dagster.tasks.loader import SCORE_FUNCTION

PROMPT_FILE_SUFFIXES = {".txt", ".md", ".jinja", ".j2", ".tmpl", ".template", ".prompt", ".yaml", ".yml"}
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".gguf"}
#: Joins the answers' version of a scored task sampled n > 1 times: answers that score every sample (pass@k,
#: maj@n). Change it when those columns change; completions keep their version.
SAMPLED_ANSWERS = "sampled-answers-1"


def _digest(parts: Iterable[str | bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return repr(obj)


def function_fingerprint(module: ModuleType, names: Iterable[str]) -> str:
    """Source of the named functions plus the same-module functions/classes they reach by name."""
    seen: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        obj = getattr(module, name, None)
        if obj is None:
            continue
        given = getattr(obj, "__fingerprint__", None)
        if isinstance(given, str):  # made from data (task.yaml): its source says nothing of what it does
            seen[name] = given
            continue
        seen[name] = _source(obj)
        code = getattr(obj, "__code__", None)
        if isinstance(obj, FunctionType) and code is not None:
            referenced = set(code.co_names)
            for const in code.co_consts:  # names used inside nested functions and comprehensions
                if hasattr(const, "co_names"):
                    referenced |= set(const.co_names)
            for ref in referenced:
                target = getattr(module, ref, None)
                if getattr(target, "__module__", None) == module.__name__:
                    todo.append(ref)
            # module-level constants the function reads (e.g. a regex or a template string)
            for ref in referenced:
                target = getattr(module, ref, None)
                if isinstance(target, str | int | float | tuple | frozenset) or type(target).__name__ == "Pattern":
                    seen.setdefault(f"const:{ref}", repr(target))
    return _digest(f"{k}\n{v}" for k, v in sorted(seen.items()))


def prompt_files_fingerprint(folder: Path, exclude: Iterable[str] = ()) -> str:
    """Top-level template-like files of the task folder. Data belongs in a subfolder or the input path."""
    skip = set(exclude)
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PROMPT_FILE_SUFFIXES and p.name not in skip
    )
    return _digest(part for p in files for part in (p.name, p.read_bytes()))


def model_fingerprint(model_path: str | None) -> str:
    """Model identity: its path, config and tokenizer files, and the names and sizes of its weight files.

    Sizes rather than full hashes: hashing tens of GB on every code-location load would cost minutes.
    """
    if not model_path:
        return "no-model"
    root = Path(model_path)
    parts: list[str | bytes] = [str(root.resolve())]
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.name in ("config.json", "generation_config.json", "tokenizer_config.json"):
                parts += [p.name, p.read_bytes()]
            elif p.suffix in WEIGHT_SUFFIXES:
                parts += [p.name, str(p.stat().st_size)]
    return _digest(parts)


def adapter_fingerprint(adapter_path: str) -> str:
    """A LoRA adapter's identity: the content of every file in its folder (adapters are small: MBs, not GBs).

    Hidden files and peft's model card (``README.md``, which nothing loads) are left out, so editing the card
    changes nothing; new weights or a new ``adapter_config.json`` change the version.
    """
    root = Path(adapter_path)
    parts: list[str | bytes] = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) and rel.as_posix() != "README.md":
            parts += [rel.as_posix(), p.read_bytes()]
    return _digest(parts)


def sampling_fingerprint(sampling: Mapping[str, Any]) -> str:
    return _digest([json.dumps(dict(sampling), sort_keys=True)])


def combine(*parts: str) -> str:
    return _digest(parts)


def task_code_versions(
    module: ModuleType,
    folder: Path,
    sampling: Mapping[str, Any],
    *,
    model_type: str,
    model_path: str | None,
    dtype: str = "auto",
    max_model_len: int | None = None,
    limit: int | None = None,
    functions: Mapping[str, str] | None = None,
    max_input_length: int | None = None,
    adapter_path: str | None = None,
    task: str = "generate",
) -> dict[str, str]:
    """The code version of each of a task's four assets.

    Versions are cumulative down the chain (prompts include raw's, completions include prompts', ...): Dagster
    marks a partition stale only for its *own* code version or a *re-materialized* input, so this is what
    makes a new prompt template show prompts, completions and answers stale at once, and lets "materialize
    stale" redo exactly those.

    ``functions``: role -> the function name used for it (default: the role's own name). ``adapter_path``: the
    LoRA adapter applied to the model (its files' content joins the model's identity). ``task``: a pooling kind
    (``embed``, ``classify``, ``reward``) joins the engine's identity, so switching kinds makes completions stale.
    Settings at their default add nothing, so versions made before a setting existed stay valid.
    """
    used = {role: role for role in ("get_file_list", "read_file", "format_prompt", "extract_answer")}
    used.update(functions or {})

    def fingerprint(*roles: str) -> str:
        fp = function_fingerprint(module, [used[r] for r in roles])
        renamed = [f"{r}={used[r]}" for r in roles if used[r] != r]
        return combine(fp, *renamed) if renamed else fp  # which function plays which role, once renamed

    raw = fingerprint("get_file_list", "read_file")
    if limit is not None:  # --limit keeps only the first rows of each shard: a full run must redo those shards
        raw = combine(raw, f"limit={limit}")
    # A task without Python is its task.yaml: its sections are in the functions' fingerprints (see the docstring).
    own = [Path(str(module.__file__)).name] if hasattr(module, "SPEC") and getattr(module, "__file__", None) else []
    prompts = combine(raw, fingerprint("format_prompt"), prompt_files_fingerprint(folder, own))
    engine = combine(model_type, model_fingerprint(model_path), dtype, str(max_model_len))
    if max_input_length is not None:  # a shorter allowance turns rows into errors
        engine = combine(engine, f"max_input_length={max_input_length}")
    if adapter_path is not None:  # the base model's identity plus the adapter's files
        engine = combine(engine, f"lora={adapter_fingerprint(adapter_path)}")
    if task != "generate":  # a pooling task keeps a vector / probabilities / a score, not text
        engine = combine(engine, f"task={task}")
    completions = combine(prompts, sampling_fingerprint(sampling), engine)
    answers = combine(completions, fingerprint("extract_answer"))
    if callable(getattr(module, SCORE_FUNCTION, None)):  # the optional scorer; a task without one keeps its versions
        answers = combine(answers, "score=" + function_fingerprint(module, [SCORE_FUNCTION]))
        if int(sampling.get("n", 1)) > 1:  # every sample scored, for pass@k and maj@n: answers made before are stale
            answers = combine(answers, SAMPLED_ANSWERS)
    return {"raw": raw, "prompts": prompts, "completions": completions, "answers": answers}
