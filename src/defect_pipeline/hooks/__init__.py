"""Kedro hooks of the project, one per module; ``settings.py`` registers them in order.

* :mod:`.parameters` — every parameter block validated at start-up (:class:`ParameterValidationHook`);
* :mod:`.tracking_server` — an unreachable MLflow server fails within seconds (:class:`TrackingServerCheckHook`);
* :mod:`.run_lock` — one `kedro run` at a time per project; a second is refused naming the first (:class:`RunLockHook`);
* :mod:`.run_log` — each `kedro run` logs to ``logs/<start>_<pipeline>.log``, kept in its MLflow run
  (:class:`RunLogHook`);
* :mod:`.pre_run` — a run that cannot succeed is refused before any node runs (:class:`PreRunChecksHook`);
* :mod:`.child_runs` — one nested MLflow child run per tracked node (:class:`MlflowStageRunHook`);
* :mod:`.interruptions` — SIGTERM stops a run like Ctrl-C and an interrupted run ends KILLED
  (:class:`InterruptionHook`).

The hooks import from their modules (``from defect_pipeline.hooks.pre_run import PreRunChecksHook``);
this package exports nothing itself.
"""
