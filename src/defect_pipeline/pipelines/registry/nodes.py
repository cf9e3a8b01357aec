"""Nodes of the model registry: register the tuned model, promote it after its test (the work is in
:mod:`defect_pipeline.tracking.registry`)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from defect_pipeline.config import RegistryParams
from defect_pipeline.data.manifest import manifest_hash
from defect_pipeline.ml.package import ModelStore
from defect_pipeline.tracking.registry import promote, register_tuned_model, render_promotion_markdown


def register(model: ModelStore, params: RegistryParams) -> dict[str, Any]:
    """A new version of ``registry.name`` from the tuned model, aliased ``registry.candidate_alias``."""
    if not params.enabled:
        return {"registered": False, "reason": "registry.enabled is false", "name": params.name}
    return register_tuned_model(model.meta(), name=params.name, alias=params.candidate_alias)


def evaluation_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``test_<metric>`` (tuned thresholds) and ``test_fixed_<metric>`` (0.5) of an evaluation summary."""
    out = {}
    for prefix, key in (("test_", "final_metrics_thresholded"), ("test_fixed_", "final_metrics_fixed")):
        out.update({f"{prefix}{name}": float(value) for name, value in summary[key].items()
                    if isinstance(value, (int, float)) and not isinstance(value, bool)})
    return out


def promote_model(summary: dict[str, Any], manifest: pd.DataFrame, params: RegistryParams
                  ) -> tuple[dict[str, Any], str]:
    """Tag the evaluated version with its test metrics; make it the champion when it beats the current one.

    Returns the promotion report as JSON and Markdown. A metric the evaluation does not have is refused
    with the names it has.
    """
    metrics = evaluation_metrics(summary)
    rule = params.promote
    if rule.metric not in metrics:
        raise ValueError(f"registry.promote.metric {rule.metric!r} is not a metric of the evaluation; use one of "
                         f"{sorted(metrics)}")
    if not params.enabled:
        report = {"name": params.name, "promoted": False, "reason": "registry.enabled is false",
                  "metric": rule.metric, "champion_alias": params.champion_alias}
        return report, render_promotion_markdown(report)
    report = promote(name=params.name, run_id=summary.get("model", {}).get("mlflow_run_id"), test_metrics=metrics,
                     test_manifest=manifest_hash(manifest), metric=rule.metric,
                     champion_alias=params.champion_alias, greater_is_better=rule.greater_is_better,
                     min_delta=rule.min_delta, require_same_manifest=rule.require_same_manifest)
    return report, render_promotion_markdown(report)
