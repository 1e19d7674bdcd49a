"""``[<task>, report]``: one unpartitioned asset that puts every model of a task side by side.

It depends on each model's ``answers`` (the default model's and each named model's), reads the shards'
Parquet files through ``shards/report.py`` (a lazy, streaming scan: nothing but sums in memory) and reports
a table of the models (Dagster table metadata and Markdown) and an SVG chart embedded in Markdown as a data
URI, the way Dagster's docs embed a PNG; it also writes ``<output>/<task>/report.{json,md,svg}``.

Staleness, as Dagster 1.13 computes it for an unpartitioned asset below dynamic-partitioned ones
(``CachingStaleStatusResolver``, the UI's "Unsynced"): with fewer than 100 shards, each shard of each parent
is a dependency, and an answers shard recorded with a new data version after the report makes the report
stale. From 100 shards on, Dagster skips such an edge for performance
(``SKIP_PARTITION_DATA_VERSION_DEPENDENCY_THRESHOLD``): the report then shows stale only for its own code
version, never for new answers. :func:`report_behind` is this project's own answer at any size (the report's
metadata records the newest answers record it read), which ``llm-infer`` and the ``<task>_report_refresh`` sensor use.
"""

import base64
import json
from collections.abc import Mapping

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    AssetsDefinition,
    DagsterInstance,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)

from llm_infer_dagster.deployment import Deployment
from llm_infer_dagster.orchestration.asset_keys import ANSWERS, REPORT, task_key
from llm_infer_dagster.orchestration.registry import partitions_def_for
from llm_infer_dagster.shards.report import ModelReport, chart_svg, model_report, report_markdown, sample_columns
from llm_infer_dagster.shards.store import atomic_write_text
from llm_infer_dagster.tasks.loader import TaskConfig

#: The report's code version: bump it when what the report computes changes.
REPORT_CODE_VERSION = "report-2"
#: The report's metadata key holding the newest answers record (storage id) it read.
ANSWERS_CURSOR = "answers_cursor"
_PAGE = 1000

_COLUMNS = [
    TableColumn("model", "string"),
    TableColumn("shards", "int"),
    TableColumn("rows", "int"),
    TableColumn("errors", "int"),
    TableColumn("extraction_rate", "float"),
    TableColumn("scored", "int"),
    TableColumn("mean_score", "float"),
    TableColumn("ci_low", "float", description="95% confidence interval of the mean score"),
    TableColumn("ci_high", "float"),
    TableColumn("ci_method", "string", description="wilson (every score 0 or 1) or t (Student t)"),
]
_TOKEN_COLUMNS = [
    TableColumn("prompt_tokens", "int"),
    TableColumn("completion_tokens", "int"),
    TableColumn("tokens_per_s", "float", description="completion tokens / the shards' generation seconds"),
]


def _sample_columns(reports: list[ModelReport]) -> list[TableColumn]:
    """pass@1, pass@n, maj@n (named with the actual n) and the rows each averaged, where a model has them."""
    names = sample_columns(reports)
    if not names:
        return []
    out = []
    for name in names:
        k = name.split("@", 1)[1]
        what = (
            "majority vote of the n answers, then scored: share correct"
            if name.startswith("maj@")
            else (f"unbiased pass@{k} (Chen et al. 2021); correct = score >= 1.0")
        )
        out.append(TableColumn(name, "float", description=what))
    out.append(TableColumn("sampled_rows", "int", description="rows in pass@1: with samples and a score"))
    for n in dict.fromkeys(r.samples.n for r in reports if r.samples is not None):
        out.append(TableColumn(f"rows@{n}", "int", description=f"rows with {n} samples: in pass@{n} and maj@{n}"))
    return out


def _sample_keys(record: Mapping[str, object]) -> list[str]:
    """A record's pass@k and maj@n keys in reading order (pass@1, pass@8, maj@8); a table record sorts its keys."""
    keys = [k for k, v in record.items() if k.startswith(("pass@", "maj@")) and v is not None]
    return sorted(keys, key=lambda k: (k.startswith("maj@"), int(k.split("@", 1)[1])))


def report_key(task: TaskConfig) -> AssetKey:
    return task_key(task.dagster_name, REPORT)


def answers_keys(task: TaskConfig) -> list[AssetKey]:
    """The answers asset of every model of the task: the default model's, then each named model's."""
    name = task.dagster_name
    return [task_key(name, ANSWERS), *(task_key(name, ANSWERS, m) for m in task.settings.models)]


def report_line(instance: DagsterInstance, task: TaskConfig) -> str:
    """One line of the last report, per model: mean score and interval (or extraction rate), for the terminal."""
    event = instance.get_latest_materialization_event(report_key(task))
    mat = event.asset_materialization if event is not None else None
    table = mat.metadata.get("models") if mat is not None else None
    if mat is None or table is None:
        return f"report: task {task.name} has none yet"
    parts = []
    for rec in table.value.records:  # type: ignore[union-attr]
        r = rec.data
        if r.get("mean_score") is not None:
            ci = f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}] ({r['ci_method']})" if r.get("ci_low") is not None else ""
            sampled = "".join(f", {k} {r[k]:.4f}" for k in _sample_keys(r))
            parts.append(f"{r['model']} mean score {r['mean_score']:.4f}{ci} over {r['scored']} rows{sampled}")
        else:
            parts.append(f"{r['model']} {r['extraction_rate']:.1%} of {r['rows']} rows extracted")
    path = mat.metadata.get("report_md")
    return "report: " + "; ".join(parts) + (f" ({path.value})" if path is not None else "")


def latest_answers_id(instance: DagsterInstance, answers: list[AssetKey]) -> int:
    """The storage id of the newest answers materialization of any model (0 if none)."""
    newest = 0
    for key in answers:
        page = instance.fetch_materializations(AssetRecordsFilter(asset_key=key), limit=1)
        if page.records:
            newest = max(newest, page.records[0].storage_id)
    return newest


def report_behind(instance: DagsterInstance, task: TaskConfig, answers: list[AssetKey]) -> bool:
    """Whether an answers shard of any model was recorded after the report last read them (or no report yet
    while answers exist): two queries per model, at any number of shards."""
    newest = latest_answers_id(instance, answers)
    if newest == 0:
        return False
    event = instance.get_latest_materialization_event(report_key(task))
    if event is None or event.asset_materialization is None:
        return True
    seen = event.asset_materialization.metadata.get(ANSWERS_CURSOR)
    return seen is None or int(seen.value) < newest  # type: ignore[arg-type]


def _generation_seconds(instance: DagsterInstance, completions: AssetKey, shards: set[str]) -> float | None:
    """Sum of the ``seconds`` each shard's latest completions materialization recorded (newest first, paged)."""
    seen: set[str] = set()
    total, found = 0.0, False
    cursor = None
    while len(seen) < len(shards):
        page = instance.fetch_materializations(AssetRecordsFilter(asset_key=completions), limit=_PAGE, cursor=cursor)
        for record in page.records:
            mat = record.asset_materialization
            if mat is None or mat.partition not in shards or mat.partition in seen:
                continue
            seen.add(mat.partition)
            value = mat.metadata.get("seconds")
            if value is not None and isinstance(value.value, int | float):
                total += float(value.value)
                found = True
        if not page.has_more:
            break
        cursor = page.cursor
    return total if found else None


def report_metadata(reports: list[ModelReport]) -> dict[str, MetadataValue]:
    """The models as a table, as Markdown, and as a chart (an SVG data URI in Markdown), plus headline numbers."""
    svg = chart_svg(reports)
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
    md: dict[str, MetadataValue] = {
        "models": MetadataValue.table(
            records=[TableRecord(r.as_record()) for r in reports],
            schema=TableSchema(columns=[*_COLUMNS, *_sample_columns(reports), *_TOKEN_COLUMNS]),
        ),
        "report": MetadataValue.md(report_markdown(reports)),
        "chart": MetadataValue.md(f"![models side by side]({uri})"),
        "rows": MetadataValue.int(sum(r.rows for r in reports)),
    }
    for r in reports:  # numbers Dagster plots over the report's materializations
        if r.mean_score is not None:
            md[f"mean_score/{r.model}"] = MetadataValue.float(round(r.mean_score, 6))
        if r.samples is not None:
            n = r.samples.n
            for name, value in (("pass@1", r.samples.pass_at_1), (f"pass@{n}", r.samples.pass_at_n),
                                (f"maj@{n}", r.samples.maj_at_n)):  # fmt: skip
                md[f"{name}/{r.model}"] = MetadataValue.float(round(value, 6))
    return md


def build_report_asset(
    task: TaskConfig, deployment: Deployment, models: Mapping[str | None, tuple[AssetKey, AssetKey]]
) -> AssetsDefinition:
    """The task's ``report`` asset over ``models`` (model -> its completions and answers keys)."""
    pdef = partitions_def_for(task)
    answers = [ans for _comp, ans in models.values()]
    assert answers == answers_keys(task), "the report's deps are answers_keys(task)"
    store = deployment.store(task.name)

    @asset(
        key=report_key(task),
        deps=answers,
        group_name=task.dagster_name,
        code_version=REPORT_CODE_VERSION,
        kinds={"report"},
        description=(
            f"Every model of task {task.name} side by side: rows, errors, extraction rate, mean score (the "
            "task's score function) with a 95% confidence interval (Wilson for 0/1 scores, else Student t), "
            "pass@1, pass@n and maj@n when rows are sampled n > 1 times, tokens and tokens/s; a table and a "
            "chart. Reads the answers and completions shards that exist."
        ),
    )
    def report(context: AssetExecutionContext) -> MaterializeResult:
        instance = context.instance
        cursor = latest_answers_id(instance, answers)  # before reading: a shard landing meanwhile re-dirties it
        order = instance.get_dynamic_partitions(pdef.name or "")
        reports = []
        for model, (comp_key, _ans) in models.items():
            shards = [k for k in order if store.has("answers", k, model)]
            comps = [k for k in shards if store.has("completions", k, model)]
            reports.append(
                model_report(
                    model or "default",
                    [store.shard_path("answers", k, model) for k in shards],
                    [store.shard_path("completions", k, model) for k in comps],
                    _generation_seconds(instance, comp_key, set(comps)),
                )
            )
        base = store.task_dir / "report"
        atomic_write_text(base.with_suffix(".json"), json.dumps([r.as_record() for r in reports], indent=2))
        atomic_write_text(base.with_suffix(".md"), report_markdown(reports) + "\n")
        atomic_write_text(base.with_suffix(".svg"), chart_svg(reports))
        for r in reports:
            context.log.info(
                f"{r.model}: {r.rows} rows, {r.extraction_rate:.1%} extracted"
                + (f", mean score {r.mean_score:.4f} over {r.scored}" if r.mean_score is not None else "")
                + (
                    f", pass@1 {r.samples.pass_at_1:.4f}, pass@{r.samples.n} {r.samples.pass_at_n:.4f}, "
                    f"maj@{r.samples.n} {r.samples.maj_at_n:.4f}"
                    if r.samples is not None
                    else ""
                )
            )
        return MaterializeResult(
            metadata={
                **report_metadata(reports),
                ANSWERS_CURSOR: MetadataValue.int(cursor),
                "report_md": MetadataValue.path(str(base.with_suffix(".md"))),
                "report_json": MetadataValue.path(str(base.with_suffix(".json"))),
            }
        )

    return report
