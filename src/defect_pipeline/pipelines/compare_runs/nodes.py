"""Node of the ``compare_runs`` pipeline (the work is in :mod:`defect_pipeline.tracking.compare`)."""

from __future__ import annotations

import logging

import pandas as pd
from matplotlib.figure import Figure

from defect_pipeline.config import CompareRunsParams
from defect_pipeline.tracking.compare import compare_runs as build_comparison

logger = logging.getLogger(__name__)


def compare_runs(stage_runs: pd.DataFrame, params: CompareRunsParams) -> tuple[pd.DataFrame, pd.DataFrame, str, Figure]:
    """The comparison table (CSV), the best run per criterion (CSV), the Markdown report and the plot."""
    runs = stage_runs.head(params.max_runs)
    result = build_comparison(runs, stages=params.stages, statuses=list(params.statuses),
                              experiment=stage_runs.attrs.get("experiment_name", ""),
                              tracking_uri=stage_runs.attrs.get("tracking_uri", ""))
    logger.info("compared %d stage run(s); best per criterion:\n%s", len(result.table),
                result.best.to_string(index=False) if not result.best.empty else "(none)")
    return result.table, result.best, result.markdown, result.figure
