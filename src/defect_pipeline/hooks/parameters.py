"""Parameter validation at start-up: an unknown or invalid parameter fails ``kedro run`` before anything runs."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl

from defect_pipeline.config import ModelParams, ParameterError, validate_parameters

logger = logging.getLogger(__name__)


class ParameterValidationHook:
    """Fail at start-up, naming the key, when any parameter is unknown or invalid.

    Runs on ``after_context_created`` — before the catalog is used, before any node runs and
    before kedro-mlflow opens a run — on the parameters as written, including ``--params``
    overrides. The model block is also checked against timm and the decoder on the meta device
    (unknown backbone, image size vs stride, decoder width), which would otherwise fail only when
    a stage starts.
    """

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        # as written: ``context.params`` would first run Kedro's own validation into the nodes' typed
        # blocks, whose errors do not name the key and its fix the way ours do
        validated = validate_parameters(context.config_loader["parameters"])
        if "model" in validated:
            check_model_block(validated["model"])
        logger.debug("parameters validated")


def check_model_block(model: ModelParams) -> None:
    """The model block against timm and the decoder (on the meta device), as a ParameterError naming the key."""
    from defect_pipeline.ml.models import check_model_config  # timm loads only when a model block is checked

    try:
        check_model_config(model.backbone, decoder=model.decoder, decoder_channels=model.decoder_channels,
                           image_size=None if model.image_size == "auto" else model.image_size,
                           seg_mode=model.seg_mode)
    except ValueError as error:
        message = str(error)
        key = ("backbone" if "unknown backbone" in message else "image_size" if "image size" in message
               else "decoder_channels" if "decoder_channels" in message or "multiple of 32" in message
               else "decoder")
        raise ParameterError([f"model.{key}: {message}"]) from None
