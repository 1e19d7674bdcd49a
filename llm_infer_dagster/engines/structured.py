"""A structured-outputs spec as an xgrammar ``Grammar``: what the HF engine masks with, and how vLLM gets
compact JSON.

The spec is the one ``tasks/structured.py`` checked when the task loaded: exactly one of ``json`` /
``regex`` / ``choice`` / ``grammar``, and with ``json`` optionally ``"disable_any_whitespace": true``.
vLLM reads that option only from its engine-wide ``structured_outputs_config``, so for one request the vLLM
engine sends the compact JSON grammar built here as an EBNF ``grammar`` instead (the same grammar vLLM's
xgrammar backend builds with the engine-wide switch). xgrammar (which imports torch) is imported on use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["compact_json_ebnf", "spec_grammar"]

_COMPACT = "disable_any_whitespace"


def _json_grammar(schema: Any, compact: bool) -> Any:
    import xgrammar as xgr

    text = schema if isinstance(schema, str) else json.dumps(schema)
    if compact:  # what vLLM's xgrammar backend does for its disable_any_whitespace
        return xgr.Grammar.from_json_schema(text, any_whitespace=False, separators=(",", ":"))
    return xgr.Grammar.from_json_schema(text)


def spec_grammar(spec: Mapping[str, Any]) -> Any:
    """The xgrammar ``Grammar`` of one spec (vLLM's defaults: JSON with any whitespace unless told)."""
    import xgrammar as xgr

    if spec.get("json") is not None:
        return _json_grammar(spec["json"], bool(spec.get(_COMPACT)))
    if spec.get("regex") is not None:
        return xgr.Grammar.from_regex(spec["regex"])
    if spec.get("choice") is not None:
        # JSON string escapes are EBNF string escapes too ("\"", "\\", "\n", "\u00e9").
        return xgr.Grammar.from_ebnf("root ::= " + " | ".join(json.dumps(c) for c in spec["choice"]))
    if spec.get("grammar") is not None:
        return xgr.Grammar.from_ebnf(spec["grammar"])
    raise ValueError(f"structured_outputs holds none of json, regex, choice, grammar: {dict(spec)}")


def compact_json_ebnf(spec: Mapping[str, Any]) -> str | None:
    """The EBNF of a compact-JSON spec (``json`` with ``disable_any_whitespace``), else None."""
    if spec.get("json") is None or not spec.get(_COMPACT):
        return None
    return str(_json_grammar(spec["json"], True))
