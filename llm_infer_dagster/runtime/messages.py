"""Every message between the pool and its engine workers, and the one codec both sides use.

The pool writes :data:`ToWorker` messages to a worker's stdin; the worker writes :data:`FromWorker`
messages to its message pipe. On the wire each is one JSON object per line, ``{"kind": ..., <fields>}``.

:func:`decode` is strict: an unknown ``kind``, a missing or unexpected field, or a field of the wrong type
raises :class:`ProtocolError` naming it, so a worker (or pool) of another version is refused, never misread.

The messages are frozen dataclasses rather than ``TypedDict``: a message is then a value of its own type,
which ``match``/``isinstance`` dispatch on (and mypy checks for exhaustiveness), it cannot be changed on the
way, and building one checks its fields; a ``TypedDict`` is a plain dict at run time and checks nothing.
:class:`Exited` is the pool's own event for its ``on_message`` callback and never crosses a pipe.
"""

from __future__ import annotations

import json
import types
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal, TypeAlias, Union, get_args, get_origin, get_type_hints

from llm_infer_dagster.engines.spec import EngineSpec

# ------------------------------------------------------------------------------------ pool -> worker


@dataclass(frozen=True)
class Setup:
    """The first message a worker reads: what engine to load, how to sample, how many shards to hold."""

    worker: int
    engine: EngineSpec
    sampling: dict[str, Any]
    prefetch: int
    kind: Literal["setup"] = "setup"


@dataclass(frozen=True)
class Job:
    """One shard to run: read its prompts from ``prompts``, write its completions to ``output``.

    ``adapter``: the LoRA adapter (a name in the setup's engine spec) it runs with; None for the base model.
    """

    shard: str
    prompts: str
    output: str
    adapter: str | None = None
    kind: Literal["job"] = "job"


@dataclass(frozen=True)
class Stop:
    """No more shards: finish what is held, then exit (EOF on stdin means the same)."""

    kind: Literal["stop"] = "stop"


# ------------------------------------------------------------------------------------ worker -> pool


@dataclass(frozen=True)
class Loaded:
    """The engine is loaded (in ``seconds``) in worker process ``pid``."""

    seconds: float
    pid: int
    kind: Literal["loaded"] = "loaded"


@dataclass(frozen=True)
class Ready:
    """The worker wants one more shard; the pool answers with a :class:`Job` or :class:`Stop`."""

    kind: Literal["ready"] = "ready"


@dataclass(frozen=True)
class Done:
    """A shard's completions are written."""

    shard: str
    rows: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    # the worker's calibration (task_settings' "calibrate") as of this shard: knob, width, trials; None when off
    tuning: dict[str, Any] | None = None
    kind: Literal["done"] = "done"


@dataclass(frozen=True)
class Failed:
    """A shard failed; the worker carries on."""

    shard: str
    error: str
    trace: str
    kind: Literal["failed"] = "failed"


@dataclass(frozen=True)
class Fatal:
    """The worker cannot go on (its engine did not load or is gone); it exits after saying so."""

    error: str
    trace: str
    kind: Literal["fatal"] = "fatal"


# ------------------------------------------------------------------------------------ the pool's own


@dataclass(frozen=True)
class Exited:
    """A worker exited with an error or a non-zero ``code`` (given to ``on_message``; never on a pipe)."""

    code: int
    error: str
    log: str
    kind: Literal["exited"] = "exited"


ToWorker: TypeAlias = Setup | Job | Stop
FromWorker: TypeAlias = Loaded | Ready | Done | Failed | Fatal
Message: TypeAlias = ToWorker | FromWorker
#: What the pool's ``on_message`` callback gets: everything a worker says, and its exit.
WorkerEvent: TypeAlias = FromWorker | Exited

TO_WORKER: tuple[type[ToWorker], ...] = (Setup, Job, Stop)
FROM_WORKER: tuple[type[FromWorker], ...] = (Loaded, Ready, Done, Failed, Fatal)
_KINDS: dict[str, type[Message]] = {cls.kind: cls for cls in (*TO_WORKER, *FROM_WORKER)}
_HINTS: dict[str, dict[str, Any]] = {kind: get_type_hints(cls) for kind, cls in _KINDS.items()}


class ProtocolError(ValueError):
    """A line that is not a message of this version of the protocol."""


def encode(msg: Message) -> str:
    """``msg`` as one newline-terminated JSON line."""
    body: dict[str, Any] = {"kind": msg.kind}
    for f in fields(msg):
        if f.name != "kind":
            value = getattr(msg, f.name)
            body[f.name] = value.to_dict() if isinstance(value, EngineSpec) else value
    return json.dumps(body) + "\n"


def decode(line: str | bytes) -> Message:
    """The message on one line; :class:`ProtocolError` for anything that is not exactly one."""
    try:
        body = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not a JSON message ({exc}): {_show(line)}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"not a message object: {_show(line)}")
    kind = body.get("kind")
    if kind is None:
        raise ProtocolError(f"message without a 'kind' field: {_show(line)}")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r} (this version knows {', '.join(map(repr, _KINDS))})")
    hints = _HINTS[kind]
    expected = [f.name for f in fields(cls) if f.name != "kind"]
    optional = {f.name for f in fields(cls) if f.default is not MISSING}  # added later: absent from older peers
    missing = [name for name in expected if name not in body and name not in optional]
    unexpected = [name for name in body if name != "kind" and name not in expected]
    if missing or unexpected:
        parts = [f"missing field(s) {', '.join(map(repr, missing))}"] if missing else []
        parts += [f"unexpected field(s) {', '.join(map(repr, unexpected))}"] if unexpected else []
        raise ProtocolError(f"{kind!r} message: {'; '.join(parts)} (a peer of another version?)")
    values = {name: _field(kind, name, body[name], hints[name]) for name in expected if name in body}
    return cls(**values)


def _field(kind: str, name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the field's annotation (the types messages use), converted if need be."""
    if hint is EngineSpec:
        if isinstance(value, dict):
            try:
                return EngineSpec.from_dict(value)
            except TypeError as exc:
                raise ProtocolError(f"{kind!r} message: field {name!r}: not an engine spec ({exc})") from None
    elif _is(value, hint):
        return float(value) if hint is float else value
    raise ProtocolError(f"{kind!r} message: field {name!r} should be {_name(hint)}, got {value!r}")


def _is(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_is(value, arg) for arg in get_args(hint))
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(hint, type) and isinstance(value, hint)


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def _show(line: str | bytes, limit: int = 200) -> str:
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    return repr(text[:limit] + ("..." if len(text) > limit else ""))
