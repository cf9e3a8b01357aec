"""Project hooks: validate every parameter block before anything runs."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl

from defect_pipeline.config import validate_parameters

logger = logging.getLogger(__name__)


class ParameterValidationHook:
    """Fail at start-up, naming the key, when any parameter is unknown or invalid.

    Runs on ``after_context_created`` — before the catalog is used, before any node runs and
    before kedro-mlflow opens a run — on the parameters including ``--params`` overrides.
    """

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        validate_parameters(context.params)
        logger.debug("parameters validated")
