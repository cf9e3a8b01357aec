"""Project settings: hooks and configuration loading.

``oc.env`` is enabled for all configuration files (not only credentials) so that
``conf/base/mlflow.yml`` can read ``MLFLOW_TRACKING_URI`` with a sqlite default.
"""

from kedro.config import OmegaConfigLoader
from omegaconf.resolvers import oc

from defect_pipeline.hooks import MlflowStageRunHook, ParameterValidationHook, PreRunChecksHook, TrackingServerCheckHook

# validation first (tryfirst), then the tracking check and the pre-run checks (outputs writable, a
# stage's starting model matching the data); kedro-mlflow's own hook comes after them
HOOKS = (TrackingServerCheckHook(), ParameterValidationHook(), PreRunChecksHook(), MlflowStageRunHook())

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
