"""The MLflow model registry: register the tuned model, tag its versions, move the aliases.

After ``thresholds`` the tuned model logged in the thresholds run becomes a new version of one
registered model (:func:`register_tuned_model`): tagged with the git commit, the data-manifest
hash, the weights hash and the run that trained it, and given the alias ``candidate``. After
``evaluate``, :func:`promote` tags that version with its test metrics and the manifest it was
tested on, and moves the alias ``champion`` to it only when :func:`compare` says its metric beats
the current champion's on the same test manifest; the decision and both sides go into a report.
Clients then load ``models:/<name>@<alias>``. MLflow 3 APIs (aliases, not the deprecated stages),
which work with the default ``sqlite:///mlflow.db`` store.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from defect_pipeline.tracking.pyfunc import MODEL_NAME
from defect_pipeline.tracking.runs import KIND_TAG, SOURCE_RUN_TAG, TAG_PREFIX, THRESHOLDS_STATUS_TAG

logger = logging.getLogger(__name__)

MANIFEST_TAG = f"{TAG_PREFIX}manifest_hash"  # the data the model was trained/tuned on
TEST_MANIFEST_TAG = f"{TAG_PREFIX}test_manifest_hash"  # the data its test metrics were measured on
RUN_TAGS = ("git.commit", "git.dirty", "kedro.env", MANIFEST_TAG, THRESHOLDS_STATUS_TAG, SOURCE_RUN_TAG)


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a version, its metric value and the manifest it was tested on."""

    version: str
    value: float | None
    manifest: str | None


def register_tuned_model(meta: Mapping[str, Any], *, name: str, alias: str) -> dict[str, Any]:
    """Register the model logged by the thresholds run named in ``meta`` (the tuned package's
    ``model.json``) as a new version of ``name`` with the alias ``alias``; returns what was done.

    Nothing is registered (``registered: false`` and the reason) when MLflow tracking was off for
    the run that wrote the package: its ``mlflow_run_id`` then names no thresholds run.
    """
    run_id = meta.get("mlflow_run_id")
    client = MlflowClient()
    run = _run(client, run_id) if run_id else None
    if run is None or run.data.tags.get(KIND_TAG) != "thresholds":
        reason = (f"the tuned model was not logged by a thresholds run (mlflow_run_id {run_id!r}); MLflow tracking "
                  "was off for it, so nothing was registered")
        logger.warning("model registry: %s", reason)
        return {"registered": False, "reason": reason, "name": name}
    tags = {key: run.data.tags[key] for key in RUN_TAGS if key in run.data.tags}
    if MANIFEST_TAG not in tags and meta.get("manifest_hash"):  # the package's own record of its training data
        tags[MANIFEST_TAG] = str(meta["manifest_hash"])
    tags.update({f"{TAG_PREFIX}weights_sha256": str(meta.get("weights_sha256", "")),
                 "backbone": str(meta.get("backbone", "")), f"{TAG_PREFIX}stage": str(meta.get("stage", ""))})
    # MLflow 3 resolves runs:/<id>/model to the run's logged model and says so at WARNING; not a problem here
    fluent = logging.getLogger("mlflow.tracking._model_registry.fluent")
    level = fluent.level
    fluent.setLevel(logging.ERROR)
    try:
        version = mlflow.register_model(f"runs:/{run_id}/{MODEL_NAME}", name, tags=tags)
    finally:
        fluent.setLevel(level)
    client.set_registered_model_alias(name, alias, version.version)
    uri = f"models:/{name}@{alias}"
    logger.info("model registry: %s version %s (run %s) is now %s", name, version.version, run_id, uri)
    return {"registered": True, "name": name, "version": str(version.version), "alias": alias, "uri": uri,
            "run_id": run_id, "tags": tags}


def compare(candidate: Side, champion: Side | None, *, metric: str, greater_is_better: bool, min_delta: float,
            require_same_manifest: bool) -> tuple[bool, str]:
    """Whether ``candidate`` replaces ``champion``, and why (a sentence)."""
    if candidate.value is None or math.isnan(candidate.value):
        return False, f"the candidate (version {candidate.version}) has no test metric {metric}"
    if champion is None:
        return True, "there is no champion yet"
    if champion.version == candidate.version:
        return False, f"version {candidate.version} is the champion already"
    if champion.value is None or math.isnan(champion.value):
        return True, f"the champion (version {champion.version}) has no test metric {metric}"
    if champion.manifest != candidate.manifest:
        if require_same_manifest:
            return False, (f"the champion (version {champion.version}) was tested on manifest {champion.manifest}, "
                           f"the candidate on {candidate.manifest}: not comparable (set "
                           "registry.promote.require_same_manifest: false to let the newer test decide)")
        return True, f"the champion was tested on other data (manifest {champion.manifest}) and may be replaced"
    gain = candidate.value - champion.value if greater_is_better else champion.value - candidate.value
    better = "higher" if greater_is_better else "lower"
    if gain > min_delta:
        return True, (f"{metric} {candidate.value:.4f} vs {champion.value:.4f}: {better} by {gain:.4f} "
                      f"(> min_delta {min_delta:g})")
    return False, (f"{metric} {candidate.value:.4f} vs {champion.value:.4f}: not {better} by more than "
                   f"min_delta {min_delta:g}")


def promote(*, name: str, run_id: str | None, test_metrics: Mapping[str, float], test_manifest: str, metric: str,
            champion_alias: str, greater_is_better: bool = True, min_delta: float = 0.0,
            require_same_manifest: bool = True) -> dict[str, Any]:
    """Tag the version registered from ``run_id`` with its test metrics, and make it ``champion_alias``
    when :func:`compare` says it beats the current one. Returns the report (decision, reason, both sides)."""
    client = MlflowClient()
    report: dict[str, Any] = {"name": name, "metric": metric, "greater_is_better": greater_is_better,
                              "min_delta": min_delta, "champion_alias": champion_alias, "promoted": False}
    version = _version_of_run(client, name, run_id) if run_id else None
    if version is None:
        report["reason"] = (f"no version of registered model {name!r} comes from run {run_id!r} (the evaluated "
                            "model was not registered: run `kedro run --pipeline=thresholds` with MLflow tracking on)")
        return report
    for key, value in test_metrics.items():
        client.set_model_version_tag(name, version.version, key, f"{value:.6g}")
    client.set_model_version_tag(name, version.version, TEST_MANIFEST_TAG, test_manifest)
    candidate = Side(str(version.version), test_metrics.get(metric), test_manifest)
    champion_version = _alias_version(client, name, champion_alias)
    champion = None if champion_version is None else Side(
        str(champion_version.version), _float(champion_version.tags.get(metric)),
        champion_version.tags.get(TEST_MANIFEST_TAG))
    promoted, reason = compare(candidate, champion, metric=metric, greater_is_better=greater_is_better,
                               min_delta=min_delta, require_same_manifest=require_same_manifest)
    if promoted:
        client.set_registered_model_alias(name, champion_alias, candidate.version)
    logger.info("model registry: version %s %s %s: %s", candidate.version,
                "is now" if promoted else "did not become", f"models:/{name}@{champion_alias}", reason)
    return {**report, "promoted": promoted, "reason": reason, "candidate": asdict(candidate),
            "champion_before": asdict(champion) if champion else None,
            "champion_after": candidate.version if promoted else (champion.version if champion else None),
            "uri": f"models:/{name}@{champion_alias}"}


def _run(client: MlflowClient, run_id: str) -> Any:
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def _version_of_run(client: MlflowClient, name: str, run_id: str) -> Any:
    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return max(versions, key=lambda v: int(v.version)) if versions else None


def _alias_version(client: MlflowClient, name: str, alias: str) -> Any:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no such alias (or model) yet
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def render_promotion_markdown(report: Mapping[str, Any]) -> str:
    """The promotion report as Markdown: the decision, its reason, and the two versions side by side."""
    from defect_pipeline.markdown import markdown_table

    name, alias = report["name"], report["champion_alias"]
    lines = ["# Model promotion", "",
             f"**{'Promoted' if report['promoted'] else 'Not promoted'}**: {report['reason']}.", ""]
    candidate, champion = report.get("candidate"), report.get("champion_before")
    if candidate:
        rows = [["candidate", candidate["version"], _shown(candidate["value"]), candidate["manifest"]]]
        if champion:
            rows.append([f"{alias} before", champion["version"], _shown(champion["value"]), champion["manifest"]])
        lines += [markdown_table(["", "version", report["metric"], "test manifest"], rows), "",
                  f"`models:/{name}@{alias}` is version {report['champion_after']} "
                  f"({'higher' if report['greater_is_better'] else 'lower'} {report['metric']} wins, min_delta "
                  f"{report['min_delta']:g}).", "",
                  "```bash", f"mlflow models serve -m \"models:/{name}@{alias}\" --env-manager local -p 5001",
                  "```", ""]
    return "\n".join(lines)


def _shown(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"
