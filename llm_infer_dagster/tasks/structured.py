"""Structured outputs: the ``structured_outputs`` sampling key, checked before any model loads, and whether a
completion matches it.

A task (``sampling_params.json``) or one row (``format_prompt``'s ``"sampling_params"``) may constrain
decoding with exactly one of vLLM's ``StructuredOutputsParams`` kinds:

- ``{"json": {...}}``: a JSON schema (an object, or a string holding one) the completion must validate against;
- ``{"regex": "..."}``: a regular expression the whole completion must match;
- ``{"choice": ["a", "b"]}``: the completion is exactly one of these strings;
- ``{"grammar": "..."}``: an EBNF (GBNF) grammar, the format of vLLM's default backend, xgrammar.

With ``json``, ``"disable_any_whitespace": true`` (vLLM's name) makes the JSON compact: the JSON grammar lets
a model put any whitespace between tokens, which a weak model fills until ``max_tokens``.

vLLM turns it into ``StructuredOutputsParams`` (``engines/vllm.py``); the HF engine into an xgrammar logits
processor (``engines/hf_structured.py``). Both compile with xgrammar, so a schema, regex or grammar is checked
here by compiling it with xgrammar (no tokenizer needed) when the task loads, and a JSON schema also against
its JSON Schema meta-schema (``jsonschema``). xgrammar (which imports torch) is imported only when a task uses
structured outputs.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from llm_infer_dagster.errors import TaskConfigError

__all__ = ["COMPACT", "KINDS", "matches", "validate_structured_outputs"]

#: The constraint kinds, vLLM's names; a spec has exactly one.
KINDS: tuple[str, ...] = ("json", "regex", "choice", "grammar")
#: The one option, for ``json`` only.
COMPACT = "disable_any_whitespace"
_KEY = '"structured_outputs"'
_EXAMPLE = '{"json": {"type": "object", ...}}, {"regex": "..."}, {"choice": ["a", "b"]} or {"grammar": "..."}'


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # xgrammar prefixes "[hh:mm:ss] /project/cpp/file.cc:83: "; keep the message.
    if text.startswith("[") and ".cc:" in text:
        text = text.split(": ", 1)[-1]
    return text[:300] or type(exc).__name__


def _schema(value: Any, where: str) -> dict[str, Any]:
    """The JSON schema as an object: a string must hold one; the meta-schema must accept it."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise TaskConfigError(
                f'{where}: "json" is a string that is not JSON ({exc.msg}); give the schema'
            ) from None
    if not isinstance(value, dict):
        raise TaskConfigError(f'{where}: "json" must be a JSON schema object, got {type(value).__name__}')
    import jsonschema  # type: ignore[import-untyped]  # no stubs; one call each

    try:
        jsonschema.validators.validator_for(value).check_schema(value)
    except jsonschema.SchemaError as exc:
        path = "/".join(str(p) for p in exc.path)
        raise TaskConfigError(
            f'{where}: "json" is not a valid JSON schema{f" at {path}" if path else ""}: {_first_line(exc)}'
        ) from None
    return value


def _compile(kind: str, value: Any, where: str) -> None:
    """Compile the constraint with xgrammar, as both engines will; a TaskConfigError names what it refused."""
    import xgrammar as xgr

    try:
        if kind == "json":
            xgr.Grammar.from_json_schema(json.dumps(value))
        elif kind == "regex":
            xgr.Grammar.from_regex(value)
        elif kind == "grammar":
            xgr.Grammar.from_ebnf(value)
    except Exception as exc:
        what = {"json": "JSON schema", "regex": "regular expression", "grammar": "EBNF grammar"}[kind]
        raise TaskConfigError(f'{where}: "{kind}" is not a {what} xgrammar can use: {_first_line(exc)}') from None


def validate_structured_outputs(value: Any, source: str) -> dict[str, Any] | None:
    """Check one ``structured_outputs`` value; return it normalised (a JSON schema string parsed), or None.

    ``source`` names where it came from and starts every error message. ``null`` means no constraint (a row
    can turn off the task's).
    """
    where = f"{source}: {_KEY}"
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TaskConfigError(f"{where} must be an object such as {_EXAMPLE}, got {type(value).__name__}")
    unknown = [k for k in value if k not in (*KINDS, COMPACT)]
    if unknown:
        raise TaskConfigError(f'{where}: unknown key "{unknown[0]}" (one of: {", ".join((*KINDS, COMPACT))})')
    given = [k for k in KINDS if value.get(k) is not None]
    if len(given) != 1:
        found = f"got {', '.join(given)}" if given else "got none"
        raise TaskConfigError(f"{where} must hold exactly one of {', '.join(KINDS)} ({found})")
    kind = given[0]
    spec = value[kind]
    compact = value.get(COMPACT)
    if compact is not None and (kind != "json" or not isinstance(compact, bool)):
        raise TaskConfigError(f'{where}: "{COMPACT}" must be true or false, and goes with "json" only')
    if kind == "json":
        spec = _schema(spec, where)
        _compile(kind, spec, where)
        return {kind: spec, COMPACT: compact} if compact is not None else {kind: spec}
    elif kind == "choice":
        if not isinstance(spec, list) or not spec or not all(isinstance(c, str) and c for c in spec):
            raise TaskConfigError(f'{where}: "choice" must be a non-empty list of non-empty strings, got {spec!r}')
        return {kind: list(spec)}
    elif not isinstance(spec, str) or not spec.strip():
        raise TaskConfigError(f'{where}: "{kind}" must be a non-empty string, got {spec!r}')
    _compile(kind, spec, where)
    return {kind: spec}


def matches(spec: Mapping[str, Any], text: str | None) -> bool:
    """Whether ``text`` satisfies the (validated) constraint: parses and validates, is a choice, matches."""
    if text is None:
        return False
    if "choice" in spec:
        return text in spec["choice"]
    if "json" in spec:
        import jsonschema

        try:
            jsonschema.validate(json.loads(text), spec["json"])
        except (ValueError, jsonschema.ValidationError):
            return False
        return True
    import xgrammar as xgr

    kind = "regex" if "regex" in spec else "grammar"
    matcher = xgr.GrammarMatcher(_string_grammar(kind, spec[kind]), terminate_without_stop_token=True)
    return bool(matcher.accept_string(text)) and bool(matcher.is_terminated())


@functools.lru_cache(maxsize=64)
def _string_grammar(kind: str, source: str) -> Any:
    """A regex or grammar compiled for matching strings: an empty vocabulary, as xgrammar's test helper does."""
    import xgrammar as xgr

    grammar = xgr.Grammar.from_regex(source) if kind == "regex" else xgr.Grammar.from_ebnf(source)
    return xgr.GrammarCompiler(xgr.TokenizerInfo([]), cache_enabled=False).compile_grammar(grammar)
