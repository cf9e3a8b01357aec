"""Typed, validated parameter blocks for every pipeline.

YAML parameters (``conf/*/parameters_*.yml``) flow one way: YAML → ``params:<block>`` →
a frozen pydantic model defined here → explicit keyword arguments into the library. Unknown
keys and bad values fail at start-up with a message that names the key (see
:func:`validate_parameters`), before any node runs. A node annotates a parameter argument
with its model (``model: ModelParams``) and Kedro (1.7+) hands it that validated model instead of
a dictionary. ``STAGES`` names the training stages,
in order. This package never imports Kedro, and imports nothing of the project but
:mod:`defect_pipeline.util`.
"""

from defect_pipeline.config.base import ParameterError
from defect_pipeline.config.registry import STAGES, validate_parameters
from defect_pipeline.config.comparison import CompareBackbonesParams
from defect_pipeline.config.diagnostics import DiagnosisParams
from defect_pipeline.config.inspection import InspectParams
from defect_pipeline.config.evaluation import (
    EnsembleParams,
    EvaluationParams,
    ExportParams,
    InferenceParams,
    ThresholdsParams,
)
from defect_pipeline.config.tracking import CompareRunsParams, PromotionParams, RegistryParams
from defect_pipeline.config.training import (
    AugmentationParams,
    CropParams,
    LossParams,
    ModelParams,
    RuntimeParams,
    StageParams,
    TrainerParams,
)
from defect_pipeline.config.data import (
    CheckParams,
    DataParams,
    DemoParams,
    MaskParams,
    SplitParams,
)

__all__ = [
    "AugmentationParams",
    "CompareBackbonesParams",
    "CompareRunsParams",
    "PromotionParams",
    "RegistryParams",
    "CropParams",
    "DiagnosisParams",
    "EnsembleParams",
    "EvaluationParams",
    "ExportParams",
    "InspectParams",
    "InferenceParams",
    "ThresholdsParams",
    "LossParams",
    "ModelParams",
    "RuntimeParams",
    "StageParams",
    "TrainerParams",
    "CheckParams",
    "DataParams",
    "DemoParams",
    "MaskParams",
    "ParameterError",
    "SplitParams",
    "STAGES",
    "validate_parameters",
]
