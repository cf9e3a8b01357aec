"""The diagnosis block's thresholds: validated, described, and the same fields as the library's config.

New with the collapse / relax / rebalance / convergence / train-accuracy findings: before them the
block had none of these keys (StrictModel: an unknown key), so these tests fail on the old code.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from defect_pipeline.config import DiagnosisParams, ParameterError, validate_parameters
from defect_pipeline.ml.diagnosis import DiagnosisConfig

NEW_THRESHOLDS = ("collapse_tolerance", "trend_epochs", "flat_fraction", "falling_fraction", "high_loss_ratio",
                  "underfit_accuracy", "accuracy_gap", "convergence_fraction")


def test_every_threshold_has_a_description_and_reaches_the_library_config() -> None:
    fields = DiagnosisParams.model_fields
    for name in NEW_THRESHOLDS:
        assert fields[name].description, name
    config = DiagnosisConfig.from_params(DiagnosisParams(accuracy_gap=0.2, trend_epochs=4))
    assert config.accuracy_gap == 0.2 and config.trend_epochs == 4
    defaults = DiagnosisConfig()
    library = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(DiagnosisConfig) if f.name in NEW_THRESHOLDS}
    assert library == {name: fields[name].default for name in NEW_THRESHOLDS}  # one set of defaults, not two


@pytest.mark.parametrize(("block", "message"), [
    ({"accuracy_gap": 0.0}, "diagnosis.accuracy_gap: Input should be greater than 0"),
    ({"trend_epochs": 1}, "diagnosis.trend_epochs: Input should be greater than or equal to 2"),
    ({"collapse_tolerance": 0.6}, "diagnosis.collapse_tolerance: Input should be less than 0.5"),
    ({"flat_fraction": 0.3, "falling_fraction": 0.2}, "falling_fraction (0.2) must be above flat_fraction (0.3)"),
    ({"stage": "stage4"}, "stage must be one of stage1, stage2, stage3"),
    ({"colapse_tolerance": 0.1}, "Did you mean 'collapse_tolerance'"),
])
def test_bad_thresholds_are_refused_naming_the_key(block: dict, message: str) -> None:
    with pytest.raises(ParameterError, match=re.escape(message)):
        validate_parameters({"diagnosis": block})
