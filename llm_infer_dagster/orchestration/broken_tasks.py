"""A broken task folder is contained: it shows up in Dagster with its one-line error; the other tasks load.

:func:`load_tasks_contained` loads each task on its own and turns what a broken folder raises (a
:class:`~llm_infer_dagster.errors.TaskConfigError` from the loader, or any other exception out of the user's
code, reduced to one line) into a :class:`BrokenTask`. :func:`broken_task_definitions` makes two Dagster
objects for each:

* ``<dagster_name>/task_folder``: an external ``AssetSpec`` in group ``<dagster_name>`` (kind ``broken``)
  whose description is the error line and "Fix the folder and reload the code location"; its definition
  metadata holds the error, the folder and the task name. It is not materializable: there is nothing to make.
* ``task_loads``: a blocking asset check on it. Executing it records a failed evaluation (severity ERROR)
  whose description is the error, so the asset's Checks tab shows it red with the message; before it runs
  the check's own description already carries the error.

Checks on an external ``AssetSpec`` are executable in Dagster 1.13: the check is its own op, it joins the
implicit asset job, and the UI's "Execute" on the Checks tab (or ``dagster asset check`` / a job selecting
it) runs it; no stand-in ``@asset`` raising ``Failure`` is needed (``tests/orchestration/test_broken_tasks.py``
runs it). Because it is blocking and fails with ERROR, the run that executes it is marked failed
("1 blocking asset check failed"): selecting everything (``*``) in the UI includes it until the folder is
fixed. The evaluation reports the error recorded when the code location loaded; after fixing the folder,
reload the code location and the placeholder is replaced by the task's assets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple, TypeVar, cast

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetSpec,
    MetadataValue,
    asset_check,
)

from llm_infer_dagster.errors import TaskConfigError
from llm_infer_dagster.orchestration.asset_keys import task_key
from llm_infer_dagster.tasks.loader import TaskConfig

__all__ = [
    "BROKEN_ASSET",
    "BROKEN_CHECK",
    "FIX_HINT",
    "BrokenTask",
    "BrokenTaskDefinitions",
    "broken_task_definitions",
    "broken_tasks_definitions",
    "dagster_name_for",
    "load_tasks_contained",
    "one_line_error",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The placeholder asset's last key component (``[<dagster_name>, "task_folder"]``).
BROKEN_ASSET = "task_folder"
#: The name of the failing check on it.
BROKEN_CHECK = "task_loads"
#: What ends the placeholder's description.
FIX_HINT = "Fix the folder and reload the code location."
_MAX_ERROR = 2000  # characters kept of an error line (a user exception's text can be huge)


def dagster_name_for(task_name: str) -> str:
    """The Dagster name (asset key prefix, group, job) a task folder called ``task_name`` gets.

    The very function behind :attr:`TaskConfig.dagster_name`, called for a folder that did not load (only its
    name is known), so a broken folder's placeholder sits in the group its assets would have had.
    """
    prop = cast(property, TaskConfig.__dict__["dagster_name"])
    assert prop.fget is not None
    return cast(str, prop.fget(SimpleNamespace(name=task_name)))


def one_line_error(exc: BaseException) -> str:
    """``exc`` as one line: a TaskConfigError's own message; otherwise ``ExcType: message``.

    A SyntaxError names its file and line (``SyntaxError: invalid syntax (/x/task_config.py, line 3)``).
    """
    if isinstance(exc, TaskConfigError):
        text = str(exc)
    elif isinstance(exc, SyntaxError):
        where = f" ({exc.filename}, line {exc.lineno})" if exc.filename else ""
        text = f"{type(exc).__name__}: {exc.msg}{where}"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_ERROR else flat[: _MAX_ERROR - 3] + "..."


@dataclass(frozen=True)
class BrokenTask:
    """A task folder that did not load: its name, where it is, and why (one line)."""

    name: str
    folder: Path
    error: str

    @property
    def dagster_name(self) -> str:
        return dagster_name_for(self.name)

    def definitions(self, dagster_name: str | None = None) -> BrokenTaskDefinitions:
        """:func:`broken_task_definitions` for this task (under ``dagster_name``, default its own)."""
        return broken_task_definitions(self.name, dagster_name or self.dagster_name, self.folder, self.error)


class BrokenTaskDefinitions(NamedTuple):
    """What to add to ``Definitions``: ``assets=...`` and ``asset_checks=...``."""

    assets: list[AssetSpec]
    asset_checks: list[AssetChecksDefinition]


def load_tasks_contained(
    task_configs: str | Path, names: Iterable[str], load: Callable[[str], T]
) -> tuple[list[T], list[BrokenTask]]:
    """``load(name)`` for every name; a folder that raises becomes a :class:`BrokenTask` instead.

    Catches ``Exception`` (TaskConfigError and whatever the user's task_config.py raises at import) and
    ``SystemExit`` (a task file calling ``sys.exit()`` would otherwise end the code server); not
    KeyboardInterrupt. Each broken folder is logged as a warning. Order follows ``names``.
    """
    loaded: list[T] = []
    broken: list[BrokenTask] = []
    for name in names:
        try:
            loaded.append(load(name))
        except (Exception, SystemExit) as exc:
            task = BrokenTask(name=name, folder=Path(task_configs) / name, error=one_line_error(exc))
            log.warning("task %r does not load; shown as %s/%s: %s", name, task.dagster_name, BROKEN_ASSET, task.error)
            broken.append(task)
    return loaded, broken


def _description(error: str) -> str:
    return f"{error}\n\n{FIX_HINT}"


def broken_task_definitions(task_name: str, dagster_name: str, folder: Path, error: str) -> BrokenTaskDefinitions:
    """The placeholder asset ``[<dagster_name>, "task_folder"]`` and its failing blocking check ``task_loads``."""
    key = task_key(dagster_name, BROKEN_ASSET)
    metadata = {
        "error": MetadataValue.text(error),
        "folder": MetadataValue.path(str(folder)),
        "task": MetadataValue.text(task_name),
    }
    spec = AssetSpec(
        key,
        group_name=dagster_name,
        description=_description(error),
        metadata=metadata,
        kinds={"broken"},
        tags={"llm_infer/broken": "true"},
    )

    @asset_check(
        asset=key,
        name=BROKEN_CHECK,
        blocking=True,
        description=f"Fails while task folder {str(folder)!r} does not load: {error}",
    )
    def _task_loads() -> AssetCheckResult:
        return AssetCheckResult(
            passed=False, severity=AssetCheckSeverity.ERROR, description=error, metadata=dict(metadata)
        )

    return BrokenTaskDefinitions(assets=[spec], asset_checks=[_task_loads])


def broken_tasks_definitions(broken: Iterable[BrokenTask], taken: Iterable[str] = ()) -> BrokenTaskDefinitions:
    """All broken tasks' definitions, each under a Dagster name no loaded task and no other broken one uses.

    ``taken``: the loaded tasks' Dagster names. Two folders that map to one name (``a-b``, ``a.b``) would
    give two assets one key and fail the whole code location; the later one gets ``<name>_broken``,
    ``<name>_broken_2``, ... instead.
    """
    used = set(taken)
    out = BrokenTaskDefinitions(assets=[], asset_checks=[])
    for task in broken:
        name = base = task.dagster_name
        if name in used:
            name = base = f"{base}_broken"
            n = 1
            while name in used:
                n += 1
                name = f"{base}_{n}"
        used.add(name)
        defs = task.definitions(name)
        out.assets.extend(defs.assets)
        out.asset_checks.extend(defs.asset_checks)
    return out
