"""How `llm-infer` and `llm-infer run-batch` take their flags: one-line errors, defaults in --help, --version.

A mistyped flag is one line naming the closest real one (``llm-infer: error: unrecognized argument --modle_path;
did you mean --model_path?``) and exit code 2, not a usage block; every other usage error is one line too, with
the command it belongs to (``llm-infer run-batch: error: ...``).
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Iterable, Sequence
from typing import NoReturn

_UNRECOGNIZED = "unrecognized arguments: "
_NUMBER = re.compile(r"^-\d|^-\.\d")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llm-infer-dagster")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's default in ``--help``: ``(default: X)``, ``(default: off)`` for a switch, or ``(required)``.

    A help text that already says its default (``default: the model's``) is left as it is.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            not action.option_strings
            or action.default is argparse.SUPPRESS
            or "default" in text.lower()
            or "required" in text
        ):
            return text
        if action.required:
            return f"{text} (required)"
        if action.nargs == 0 and action.default in (False, None):  # store_true
            return f"{text} (default: off)"
        if action.default is None:
            return f"{text} (default: none)"
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit code 2."""

    def flags(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings]

    def error(self, message: str) -> NoReturn:
        if message.startswith(_UNRECOGNIZED):
            extras = message[len(_UNRECOGNIZED) :].split()
            self.fail(unrecognized_message(extras, self.flags(), self.prog))
        self.fail(f"{message}; see {self.prog} --help")

    def fail(self, message: str) -> NoReturn:
        """``<prog>: error: <message>`` on stderr, exit code 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def unknown_flags(argv: Sequence[str], flags: Iterable[str]) -> list[str]:
    """The flags of ``argv`` that are none of ``flags`` nor an abbreviation of one (as argparse allows)."""
    known = list(flags)
    out = []
    for arg in argv:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if not arg.startswith("-") or arg == "-" or _NUMBER.match(arg):
            continue
        if name in known or (name.startswith("--") and any(f.startswith(name) for f in known)):
            continue
        out.append(name)
    return out


def unrecognized_message(extras: Sequence[str], flags: Sequence[str], prog: str = "llm-infer") -> str:
    """``unrecognized argument --modle_path; did you mean --model_path?`` for what argparse could not place."""
    named = list(dict.fromkeys(e.split("=", 1)[0] for e in extras if e.startswith("-") and not _NUMBER.match(e)))
    if not named:  # a stray value: a flag's value with a space in it, or a positional argument
        return f"unrecognized argument {extras[0]!r} (a value without its flag?); see {prog} --help"
    candidates = [f for f in flags if f.startswith("--")] or list(flags)
    close = {n: difflib.get_close_matches(n, candidates, n=1, cutoff=0.6) for n in named}
    if len(named) == 1:
        name = named[0]
        return f"unrecognized argument {name}; " + (
            f"did you mean {close[name][0]}?" if close[name] else f"see {prog} --help"
        )
    parts = [f"{n} (did you mean {close[n][0]}?)" if close[n] else n for n in named]
    return "unrecognized arguments " + ", ".join(parts) + f"; see {prog} --help"


def parse_strictly(parser: OneLineParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with a mistyped flag named (and its closest flag) before "X is required"
    can hide it (``--ouput_path`` would otherwise read as a missing ``--output_path``)."""
    if unknown := unknown_flags(argv, parser.flags()):
        parser.fail(unrecognized_message(unknown, parser.flags(), parser.prog))
    return parser.parse_args(list(argv))
