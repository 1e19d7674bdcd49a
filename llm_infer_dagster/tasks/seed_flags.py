"""The seed's ``--model_args``, made to agree with the flags that name the same engine setting.

Seed users put ``tensor_parallel_size``, ``max_model_len``, ``dtype`` or ``trust_remote_code`` inside
``--model_args`` (the seed's README does). Here each of those has its own flag and its own place in the
assets' code versions, so such a key is moved to its flag: a value given only in ``--model_args`` is used as if
given by the flag; the same value in both is fine; two different values are refused with one line, before
anything starts. Everything else in ``--model_args`` stays an engine argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm_infer_dagster.errors import SettingsError

# model_args key -> (its flag, the type it must have, the flag's default)
FLAG_KEYS: dict[str, tuple[str, type, Any]] = {
    "tensor_parallel_size": ("--tensor_parallel_size", int, 1),
    "max_model_len": ("--max_model_len", int, None),
    "dtype": ("--dtype", str, "auto"),
    "trust_remote_code": ("--trust_remote_code", bool, False),
}


def merge_model_args(flags: Mapping[str, Any], model_args: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(flag values, engine arguments)`` with the keys of ``FLAG_KEYS`` moved from ``model_args`` to the flags.

    ``flags``: the four settings as given on the command line, ``None`` where the flag was not given (the
    flag's default then applies unless ``model_args`` has the key).
    """
    engine_args = dict(model_args)
    merged: dict[str, Any] = {}
    for key, (flag, kind, default) in FLAG_KEYS.items():
        given = flags.get(key)
        if key not in engine_args:
            merged[key] = default if given is None else given
            continue
        value = engine_args.pop(key)
        if (
            kind is int
            and (isinstance(value, bool) or not isinstance(value, int))
            or (kind is not int and not isinstance(value, kind))
        ):
            raise SettingsError(
                f"--model_args: {key} must be {'an integer' if kind is int else 'a ' + kind.__name__}, "
                f"got {value!r}; or leave it out and use {flag}"
            )
        if given is not None and given != value:
            raise SettingsError(
                f"--model_args sets {key}={value!r} but {flag} gives {given!r}: give it once "
                f"({flag} or --model_args, not both with different values)"
            )
        merged[key] = value
    return merged, engine_args
