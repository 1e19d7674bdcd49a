"""What the streaming loop reports as it goes, and the sink that receives it.

The loop never knows who listens: the Dagster step (``orchestration/assets/pipeline.py``) records each
``Landed`` shard as a materialization and each ``Checked`` as check evaluations; a test can collect them.
Metadata values are plain (numbers, strings), or :class:`FilePath` / :class:`Markdown` where a reader should
see a path or a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from llm_infer_dagster.shards.quality import CheckResult


class AssetRef(NamedTuple):
    """One of a task's assets: ``raw``, ``prompts``, ``completions``, ``answers`` (and ``input``), of the
    default model (``model`` None) or of a named model of the task."""

    asset: str
    model: str | None = None


class FilePath(str):
    """A metadata value that is a file's path."""


class Markdown(str):
    """A metadata value that is Markdown (a preview table)."""


@dataclass(frozen=True)
class Landed:
    """``ref``'s shard ``shard`` is written, made by ``code_version`` from ``parent``'s shard."""

    ref: AssetRef
    shard: str
    code_version: str
    parent: AssetRef
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Checked:
    """The selected quality checks of ``ref``'s shard ``shard``, just evaluated."""

    ref: AssetRef
    shard: str
    results: list[CheckResult]


class StreamFailed(Exception):
    """Some shards failed (or the step could not start): ``description`` says which and why, on one line each;
    ``failed_shards`` maps shard -> the first line of why; ``bad_input`` is True when every cause is the
    user's input or task code."""

    def __init__(self, description: str, failed_shards: dict[str, str] | None = None, bad_input: bool = True):
        super().__init__(description)
        self.description, self.failed_shards, self.bad_input = description, failed_shards, bad_input


class Log(Protocol):
    """Where the loop's progress lines go (Dagster's step log, or a ``logging.Logger``)."""

    def info(self, msg: str) -> Any: ...

    def warning(self, msg: str) -> Any: ...

    def error(self, msg: str) -> Any: ...


class StreamSink(Protocol):
    """Receives what the loop reports, in the order it happens."""

    @property
    def log(self) -> Log:
        """Where the loop's progress lines go."""

    def making(self, ref: AssetRef, shard: str) -> None:
        """About to make ``ref``'s shard: what it is made from is what has been recorded until now."""

    def landed(self, event: Landed) -> None:
        """A shard is written (its Parquet file is in place)."""

    def checked(self, event: Checked) -> None:
        """Checks of a shard were evaluated."""
