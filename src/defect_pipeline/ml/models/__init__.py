"""Multitask defect network: a timm backbone, a segmentation decoder and an image classifier.

:func:`create_model` builds a :class:`MultitaskNet` whose ``forward`` returns a :class:`MultitaskOutput`
with per-pixel segmentation logits at input resolution and image-level classification logits (pooled
from the deepest backbone feature map). Modules: ``net`` (the ``nn.Module``), ``backbones`` (timm
probing on the meta device), ``decoders`` (the decoder registry: smp ``fpn``/``unet``/``dpt`` and our
``sfp`` from ``vit_decoder``), ``factory`` (:func:`create_model`, :func:`check_model_config`),
``weights`` (loading local backbone checkpoints) and ``size`` (parameter counts, memory estimate).
Code outside this package imports from here.
"""

from defect_pipeline.ml.models.backbones import backbone_data_config, list_backbone_families
from defect_pipeline.ml.models.decoders import DECODERS
from defect_pipeline.ml.models.factory import SEG_MODES, check_model_config, create_model, input_stride
from defect_pipeline.ml.models.net import MultitaskNet, MultitaskOutput, check_input_size
from defect_pipeline.ml.models.size import count_parameters, training_memory_estimate
from defect_pipeline.ml.models.weights import load_backbone_state, load_backbone_weights

__all__ = [
    "DECODERS",
    "SEG_MODES",
    "backbone_data_config",
    "MultitaskNet",
    "MultitaskOutput",
    "check_input_size",
    "check_model_config",
    "count_parameters",
    "create_model",
    "input_stride",
    "list_backbone_families",
    "load_backbone_state",
    "load_backbone_weights",
    "training_memory_estimate",
]
