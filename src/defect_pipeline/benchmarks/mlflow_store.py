"""Read a project's MLflow runs from its sqlite tracking store, read-only, without importing MLflow.

Benchmark commands report runs that may still be training (or belong to someone else's scratch
copy), so they must never write to the store: the database is opened with SQLite's ``mode=ro``.
The benchmarks package is a library that imports no framework (tests/test_architecture.py), so
this reads MLflow's tables (``runs``, ``tags``, ``params``, ``metrics``, ``latest_metrics``)
directly; they have kept these columns since MLflow 1.x. A tracking server is not supported:
copy its runs into a sqlite store or run the command where the project's ``mlflow.db`` is.

The run a project reports is its **default run**: the newest finished parent run of ``kedro run``
(tag ``kedro.pipeline = __default__``); its child runs hold the stages, thresholds and evaluation.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PIPELINE = "__default__"
PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "defect_pipeline.kind"
STAGE_TAG = "defect_pipeline.stage"
SOURCE_RUN_TAG = "defect_pipeline.source_run_id"
MACHINE_TAG = "defect_pipeline.machine"  # the machine a run ran on (tracking.runs.reproducibility_tags)


class RunRecordError(ValueError):
    """A project's MLflow records cannot answer what a benchmark asks (missing store, run or metric)."""


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run: identity, status, tags, parameters and the latest value of each metric."""

    run_id: str
    name: str
    status: str
    start_time: int
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def parent_id(self) -> str | None:
        return self.tags.get(PARENT_TAG)

    @property
    def kind(self) -> str | None:
        return self.tags.get(KIND_TAG)


def store_path(project: Path, tracking_uri: str | None = None) -> Path:
    """The sqlite file of ``tracking_uri`` (default: the project's ``mlflow.db``); a relative
    ``sqlite:///`` path is relative to the project, as ``kedro run`` resolves it there."""
    if tracking_uri is None:
        path = Path(project) / "mlflow.db"
    elif tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        path = path if path.is_absolute() else Path(project) / path
    else:
        raise RunRecordError(f"--tracking-uri {tracking_uri}: only sqlite:/// stores are read (read-only, without "
                             "MLflow); run the command where the project's mlflow.db is")
    if not path.is_file():
        raise RunRecordError(f"{path}: no MLflow database there; run `kedro run` in {project} first (it tracks into "
                             "sqlite:///mlflow.db at the project root), or pass --tracking-uri sqlite:///<file>")
    return path


class RunStore:
    """The runs of one sqlite MLflow store (deleted runs left out), opened read-only."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self._connection.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as error:
            raise RunRecordError(f"{self.path}: not a readable MLflow sqlite store ({error})") from None

    def runs(self) -> list[RunRecord]:
        """Every run that is not deleted, oldest first, with its tags, parameters and latest metrics."""
        rows = self._rows("SELECT run_uuid, name, status, start_time FROM runs "
                          "WHERE lifecycle_stage != 'deleted' ORDER BY start_time, run_uuid")
        per_run: dict[str, dict[str, dict]] = {row[0]: {"tags": {}, "params": {}, "metrics": {}} for row in rows}
        for table, kind in (("tags", "tags"), ("params", "params")):
            for key, value, run_id in self._rows(f"SELECT key, value, run_uuid FROM {table}"):  # noqa: S608
                if run_id in per_run:
                    per_run[run_id][kind][key] = value
        for key, value, is_nan, run_id in self._rows("SELECT key, value, is_nan, run_uuid FROM latest_metrics"):
            if run_id in per_run:
                per_run[run_id]["metrics"][key] = float("nan") if is_nan else float(value)
        return [RunRecord(run_id, name or "", status, int(start or 0), **per_run[run_id])
                for run_id, name, status, start in rows]

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``(step, value)`` of a metric, by step; a step logged twice keeps its latest value."""
        rows = self._rows("SELECT step, value, is_nan FROM metrics WHERE run_uuid = ? AND key = ? "
                          "ORDER BY step, timestamp", (run_id, key))
        latest = {int(step): (float("nan") if is_nan else float(value)) for step, value, is_nan in rows}
        return sorted(latest.items())

    def default_run(self, run_id: str | None = None) -> RunRecord:
        """``run_id`` (a parent run of this store), or the newest finished ``kedro run`` of the default pipeline."""
        runs = self.runs()
        if run_id is not None:
            found = [r for r in runs if r.run_id == run_id or r.run_id.startswith(run_id)]
            if len(found) != 1:
                raise RunRecordError(f"{self.path}: run id {run_id!r} matches {len(found)} runs; give its full id "
                                     "(`kedro mlflow ui`, or the parent run's id in the run's log)")
            return found[0]
        defaults = [r for r in runs if r.parent_id is None and r.status == "FINISHED"
                    and r.tags.get("kedro.pipeline", r.name) == DEFAULT_PIPELINE]
        if not defaults:
            seen = ", ".join(sorted({f"{r.tags.get('kedro.pipeline', r.name)} ({r.status})" for r in runs
                                     if r.parent_id is None})) or "none"
            raise RunRecordError(f"{self.path}: no finished run of the default pipeline (`kedro run`); parent runs "
                                 f"there: {seen}. Let the run finish, or name one with its run id")
        return defaults[-1]

    def children(self, parent: RunRecord) -> list[RunRecord]:
        """The child runs of ``parent``, oldest first."""
        return [r for r in self.runs() if r.parent_id == parent.run_id]
