"""The int8 recipes the export can try and the rule that keeps one (:mod:`defect_pipeline.ml.int8_settings`).

Before this module the export had one fixed recipe (QDQ, per-channel, MinMax) and kept it whatever it
measured: there was no setting to name, and an int8 model that lost more mIoU than a faster, equally
cheap alternative was kept. These tests failed on that code (no module ``int8_settings``).
"""

from __future__ import annotations

import pytest

from defect_pipeline.ml.int8_settings import INT8_SETTINGS, choose_int8_setting, resolve_int8_settings


def test_the_fastest_setting_within_the_allowed_loss_is_kept() -> None:
    measured = {"per_channel": {"speedup": 1.6, "miou_loss": 0.004},
                "per_tensor": {"speedup": 1.8, "miou_loss": 0.030},   # faster, but loses 3 points
                "reduce_range": {"speedup": 1.7, "miou_loss": 0.009}}
    name, why = choose_int8_setting(measured, max_miou_loss=0.01)
    assert name == "reduce_range" and "fastest" in why and "per_tensor" not in why
    assert choose_int8_setting(measured, max_miou_loss=0.05)[0] == "per_tensor"


def test_without_a_setting_within_the_loss_the_most_accurate_is_kept_and_said() -> None:
    measured = {"per_channel": {"speedup": 1.6, "miou_loss": 0.016}, "per_tensor": {"speedup": 1.8, "miou_loss": 0.04}}
    name, why = choose_int8_setting(measured, max_miou_loss=0.01)
    assert name == "per_channel" and why.startswith("no setting loses <= 1 point")


def test_settings_are_named_recipes_and_a_bad_name_is_refused() -> None:
    assert [s.name for s in resolve_int8_settings(["per_tensor", "per_channel"])] == ["per_tensor", "per_channel"]
    options = INT8_SETTINGS["per_tensor"].quantize_static_options()
    assert options["per_channel"] is False and options["reduce_range"] is False
    assert INT8_SETTINGS["per_channel"].quantize_static_options()["per_channel"] is True
    assert INT8_SETTINGS["s8s8"].quantize_static_options()["extra_options"] == {"ActivationSymmetric": True}
    assert "per-tensor" in INT8_SETTINGS["per_tensor"].describe()
    with pytest.raises(ValueError, match=r"export.int8_settings: unknown setting\(s\) 'per_chanel'; choose from "
                                         r"per_channel, per_tensor"):
        resolve_int8_settings(["per_chanel"])
    with pytest.raises(ValueError, match="export.int8_settings is empty"):
        resolve_int8_settings([])
    with pytest.raises(ValueError, match="lists a setting twice"):
        resolve_int8_settings(["per_tensor", "per_tensor"])
