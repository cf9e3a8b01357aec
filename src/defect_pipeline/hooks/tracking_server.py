"""The MLflow tracking-server check: an unreachable server fails ``kedro run`` in seconds, before any node runs."""

from __future__ import annotations

import mlflow
from kedro.framework.hooks import hook_impl

from defect_pipeline.tracking.runs import check_tracking_uri


class TrackingServerCheckHook:
    """An unreachable tracking server fails the run within seconds, before kedro-mlflow touches it.

    MLflow's client would otherwise retry with back-off for minutes, after the data pipeline may
    already have run. Skipped when an MLflow run is already active (an orchestrator owns it).
    """

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        if mlflow.active_run() is not None:
            return
        server = (context.config_loader["mlflow"] or {}).get("server", {})
        uri = server.get("mlflow_tracking_uri")
        if uri:
            check_tracking_uri(str(uri))
