"""Project settings: hooks and configuration loading.

``oc.env`` is enabled for all configuration files (not only credentials) so that
``conf/base/mlflow.yml`` can read ``MLFLOW_TRACKING_URI`` with a sqlite default.
"""

from kedro.config import OmegaConfigLoader
from omegaconf.resolvers import oc

from defect_pipeline.hooks.child_runs import MlflowStageRunHook
from defect_pipeline.hooks.interruptions import InterruptionHook
from defect_pipeline.hooks.parameter_logging import ParameterLoggingHook
from defect_pipeline.hooks.parameters import ParameterValidationHook
from defect_pipeline.hooks.pre_run import PreRunChecksHook
from defect_pipeline.hooks.run_lock import RunLockHook
from defect_pipeline.hooks.run_log import RunLogHook
from defect_pipeline.hooks.tracking_server import TrackingServerCheckHook

# When the context is created: validation and the tracking check (tryfirst). Before the pipeline runs:
# the run's log file opens first (a hook wrapper registered after the lock's, so it wraps it and
# records a refusal; it closes after every end-of-run hook and goes into the MLflow parent run), then
# the run lock (a hook wrapper around every other before_pipeline_run: one `kedro run` per
# project, released again if a later hook refuses the run), then the pre-run checks (outputs writable,
# a stage's starting model matching the data); kedro-mlflow's own hook comes after them. The child-run
# and interruption hooks act last (trylast), once kedro-mlflow has opened the parent run; the typed
# parameter blocks are logged into the parent (tryfirst) before a node's child run opens. After the
# run, the lock is released last (trylast).
HOOKS = (TrackingServerCheckHook(), ParameterValidationHook(), RunLockHook(), RunLogHook(), PreRunChecksHook(),
         ParameterLoggingHook(), MlflowStageRunHook(), InterruptionHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "custom_resolvers": {"oc.env": oc.env},
    # an environment (conf/neu_seg, conf/gpu) overrides only the keys it names
    "merge_strategy": {"parameters": "soft"},
    # kedro-mlflow adds this pattern itself, but only in its own hook; the tracking-server check
    # reads mlflow.yml before that
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"]},
}
