"""Compare the stage runs of an MLflow experiment: one row per stage run, best per criterion.

Input is :func:`mlflow.search_runs`' table (``params.*``, ``metrics.*``, ``tags.*`` columns) of
the experiment; rows are the stage child runs, and the ``test_*`` metrics of the newest
``evaluate`` run of a model are joined to the stage run that trained it (tag
``defect_pipeline.source_run_id``). Everything here is pandas and matplotlib, testable without a
server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from defect_pipeline.markdown import markdown_table
from defect_pipeline.tracking.runs import KIND_TAG, SOURCE_RUN_TAG, STAGE_TAG

# comparison column → (search_runs column, kind)
PARAM_COLUMNS = {
    "backbone": "params.backbone", "decoder": "params.decoder", "image_size": "params.image_size",
    "init_from": "params.init_from", "freeze_backbone": "params.freeze_backbone", "epochs": "params.epochs",
    "batch_size": "params.batch_size", "lr_head": "params.lr_head", "lr_backbone": "params.lr_backbone",
    "loss.weighting": "params.loss.weighting", "precision": "params.precision", "seed": "params.seed",
}
METRIC_COLUMNS = {
    "best_val_loss": "metrics.best_val_loss", "best_val_combined_score": "metrics.best_val_combined_score",
    "best_val_miou": "metrics.best_val_miou", "best_val_macro_f1": "metrics.best_val_macro_f1",
    "epochs_run": "metrics.epochs_run", "train_samples_per_s": "metrics.train_samples_per_s",
    "val_samples_per_s": "metrics.val_samples_per_s", "epoch_seconds": "metrics.epoch_seconds",
    "peak_rss_mb": "metrics.peak_rss_mb",
}
# criterion → (column, "min" or "max")
CRITERIA = {
    "lowest validation loss": ("best_val_loss", "min"),
    "best validation combined score": ("best_val_combined_score", "max"),
    "best test combined score": ("test_combined_score", "max"),
    "best test mIoU": ("test_miou", "max"),
    "fastest training (samples/s)": ("train_samples_per_s", "max"),
    "smallest model (parameters)": ("parameters_M", "min"),
}


@dataclass
class RunComparison:
    """The table (one row per stage run), the best run per criterion, a Markdown text and a plot."""

    table: pd.DataFrame
    best: pd.DataFrame
    markdown: str
    figure: Figure


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    return runs[name] if name in runs.columns else pd.Series([None] * len(runs), index=runs.index, dtype=object)


def comparison_table(runs: pd.DataFrame, *, stages: list[str] | None = None,
                     statuses: list[str] | None = None) -> pd.DataFrame:
    """One row per stage run, newest first: identity, key parameters, best/test metrics, speed, size."""
    tag = f"tags.{STAGE_TAG}"
    if runs.empty or tag not in runs.columns:
        return pd.DataFrame(columns=["run_id", "stage", *PARAM_COLUMNS, "parameters_M", *METRIC_COLUMNS])
    evaluations = _test_metrics_by_source(runs)
    runs = runs[runs[tag].notna()]
    if stages:
        runs = runs[runs[tag].isin(stages)]
    if statuses:
        runs = runs[runs["status"].isin(statuses)]
    table = pd.DataFrame({
        "run_id": runs["run_id"],
        "run_name": _column(runs, "tags.mlflow.runName"),
        "parent_run_id": _column(runs, "tags.mlflow.parentRunId"),
        "stage": runs[tag],
        "status": runs["status"],
        "start_time": runs["start_time"],
    })
    for name, source in PARAM_COLUMNS.items():
        table[name] = _column(runs, source)
    for name in ("decoder", "precision"):  # what "auto" resolved to, when the run recorded it
        table[name] = _column(runs, f"tags.{name}").fillna(table[name])
    table["parameters_M"] = pd.to_numeric(_column(runs, "metrics.parameters_total"), errors="coerce") / 1e6
    table["trainable_M"] = pd.to_numeric(_column(runs, "metrics.parameters_trainable"), errors="coerce") / 1e6
    for name, source in METRIC_COLUMNS.items():
        table[name] = pd.to_numeric(_column(runs, source), errors="coerce")
    for source in sorted(c for c in runs.columns if c.startswith("metrics.test_")):
        table[source[len("metrics."):]] = pd.to_numeric(runs[source], errors="coerce")
    if not evaluations.empty:  # test metrics of evaluate runs, joined to the stage run that trained the model
        joined = evaluations.reindex(table["run_id"])
        for column in evaluations.columns:
            values = pd.to_numeric(pd.Series(joined[column].to_numpy(), index=table.index), errors="coerce")
            table[column] = values.combine_first(table[column]) if column in table.columns else values
    table["git_commit"] = _column(runs, "tags.git.commit")
    table["manifest_hash"] = _column(runs, "tags.defect_pipeline.manifest_hash")
    return table.sort_values("start_time", ascending=False, kind="stable").reset_index(drop=True)


def _test_metrics_by_source(runs: pd.DataFrame) -> pd.DataFrame:
    """``test_*`` metrics of the newest finished evaluation run per training run (index: its run id)."""
    source, kind = f"tags.{SOURCE_RUN_TAG}", f"tags.{KIND_TAG}"
    columns = [c for c in runs.columns if c.startswith("metrics.test_")]
    if source not in runs.columns or kind not in runs.columns or not columns:
        return pd.DataFrame()
    evaluations = runs[(runs[kind] == "evaluation") & runs[source].notna() & (runs["status"] == "FINISHED")]
    evaluations = evaluations.sort_values("start_time").drop_duplicates(source, keep="last")
    return evaluations.set_index(source)[columns].rename(columns=lambda c: c[len("metrics."):])


def best_per_criterion(table: pd.DataFrame) -> pd.DataFrame:
    """For each criterion with at least one value: the winning run and its value."""
    rows = []
    for criterion, (column, direction) in CRITERIA.items():
        if column not in table.columns:
            continue
        values = pd.to_numeric(table[column], errors="coerce")
        if values.notna().sum() == 0:
            continue
        index = values.idxmin() if direction == "min" else values.idxmax()
        winner = table.loc[index]
        rows.append({"criterion": criterion, "run_id": winner["run_id"], "stage": winner["stage"],
                     "backbone": winner["backbone"], "column": column, "value": float(values[index])})
    return pd.DataFrame(rows, columns=["criterion", "run_id", "stage", "backbone", "column", "value"])


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _label(row: pd.Series) -> str:
    return f"{row['stage']} · {row['backbone']} · {str(row['run_id'])[:8]}"


def render_markdown(table: pd.DataFrame, best: pd.DataFrame, *, experiment: str, tracking_uri: str) -> str:
    shown = ["run_id", "stage", "backbone", "decoder", "image_size", "epochs_run", "lr_head", "lr_backbone",
             "loss.weighting", "parameters_M", "best_val_loss", "best_val_combined_score", "best_val_miou",
             *[c for c in table.columns if c.startswith("test_")], "train_samples_per_s"]
    lines = [f"# Run comparison: experiment `{experiment}`", "",
             f"Tracking URI: `{tracking_uri}`. {len(table)} stage run(s), newest first. Every row is an MLflow "
             "child run (open it with `kedro mlflow ui`); `best_*` are the best values over the run's epochs.", ""]
    if table.empty:
        lines.append("No stage runs yet: run a training stage (`kedro run --pipeline=stage1`) first.")
        return "\n".join(lines) + "\n"
    lines += ["## Best run per criterion", ""]
    lines.append(markdown_table(["criterion", "run", "stage", "backbone", "value"],
                                [[r.criterion, f"`{r.run_id}`", r.stage, r.backbone, _fmt(r.value)]
                                 for r in best.itertuples()]))
    lines += ["", "## All stage runs", ""]
    lines.append(markdown_table(shown, [[(f"`{row[c]}`" if c == "run_id" else _fmt(row[c])) for c in shown]
                                        for _, row in table.iterrows()]))
    return "\n".join(lines) + "\n"


def render_plot(table: pd.DataFrame) -> Figure:
    """Best validation combined score per run, and score against training speed."""
    figure = Figure(figsize=(12, max(3.0, 0.4 * len(table) + 1.5)))
    bars, scatter = figure.subplots(1, 2)
    if table.empty:
        for ax in (bars, scatter):
            ax.text(0.5, 0.5, "no stage runs", ha="center", va="center")
            ax.set_axis_off()
        return figure
    labels = [_label(row) for _, row in table.iterrows()]
    scores = table["best_val_combined_score"].astype(float).fillna(0.0)
    bars.barh(labels, scores, color="tab:blue")
    bars.invert_yaxis()
    bars.set_xlabel("best val combined score")
    bars.set_title("score per stage run")
    for backbone, group in table.groupby(table["backbone"].astype(str)):
        scatter.scatter(group["train_samples_per_s"], group["best_val_combined_score"], label=backbone)
    scatter.set_xlabel("train samples/s")
    scatter.set_ylabel("best val combined score")
    scatter.set_title("score vs training speed")
    scatter.legend(fontsize="small")
    figure.tight_layout()
    return figure


def compare_runs(runs: pd.DataFrame, *, stages: list[str] | None = None, statuses: list[str] | None = None,
                 experiment: str = "", tracking_uri: str = "") -> RunComparison:
    """Everything the ``compare_runs`` pipeline writes, from a ``search_runs`` table."""
    table = comparison_table(runs, stages=stages, statuses=statuses)
    best = best_per_criterion(table)
    return RunComparison(table, best, render_markdown(table, best, experiment=experiment, tracking_uri=tracking_uri),
                         render_plot(table))
