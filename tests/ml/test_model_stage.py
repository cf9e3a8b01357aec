"""Which stage's model the steps after training use (``thresholds.model_stage``): :func:`select_stage_model`.

Written before ``model_stage`` existed: there the thresholds pipeline always read ``stage3.model``
and ``select_stage_model`` did not exist, so each of these failed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from defect_pipeline.config import STAGES, ParameterError, ThresholdsParams, validate_parameters
from defect_pipeline.ml.model_use import select_stage_model
from defect_pipeline.ml.package import MODEL_FILE, WEIGHTS_FILE, ModelStore
from defect_pipeline.pipelines.thresholds.nodes import select_model


def _stores(root: Path, written: dict[str, int]) -> dict[str, ModelStore]:
    """A package folder per stage; the stages in ``written`` hold a package written at that time (s)."""
    stores = {}
    for stage in STAGES:
        folder = root / stage / "model"
        if stage in written:
            folder.mkdir(parents=True)
            for name in (WEIGHTS_FILE, MODEL_FILE):
                (folder / name).write_text("{}")
            os.utime(folder / MODEL_FILE, ns=(written[stage] * 10**9, written[stage] * 10**9))
        stores[stage] = ModelStore(str(folder), hint=f"run kedro run --pipeline={stage}")
    return stores


def test_auto_takes_the_last_stage_of_a_full_run(tmp_path: Path) -> None:
    stage, reason = select_stage_model(_stores(tmp_path, {"stage1": 100, "stage2": 200, "stage3": 300}))
    assert stage == "stage3" and reason == "thresholds.model_stage: auto, and stage3 wrote its model last"


def test_auto_takes_stage2_when_stage3_never_ran(tmp_path: Path) -> None:
    assert select_stage_model(_stores(tmp_path, {"stage1": 100, "stage2": 200}), "auto")[0] == "stage2"


def test_auto_passes_over_a_stage3_left_from_before_stage2_was_retrained(tmp_path: Path) -> None:
    stage, reason = select_stage_model(_stores(tmp_path, {"stage1": 100, "stage2": 400, "stage3": 300}))
    assert stage == "stage2"
    assert "stage3 has an older model (not retrained after stage2): set thresholds.model_stage: stage3" in reason


def test_auto_breaks_a_tie_towards_the_later_stage(tmp_path: Path) -> None:
    assert select_stage_model(_stores(tmp_path, {"stage1": 100, "stage2": 100, "stage3": 100}))[0] == "stage3"


def test_a_named_stage_wins_over_a_newer_one(tmp_path: Path) -> None:
    stores = _stores(tmp_path, {"stage1": 100, "stage2": 200, "stage3": 300})
    assert select_stage_model(stores, "stage2") == ("stage2", "thresholds.model_stage: stage2")
    assert select_model(ThresholdsParams(model_stage="stage2"), *stores.values()) == stores["stage2"]
    assert select_model(ThresholdsParams(), *stores.values()) == stores["stage3"]


def test_missing_models_say_what_to_run(tmp_path: Path) -> None:
    stores = _stores(tmp_path, {"stage1": 100, "stage2": 200})
    with pytest.raises(FileNotFoundError, match=r"thresholds.model_stage is stage3, but .*stage3/model holds no "
                                                r"model package: run `kedro run --pipeline=stage3` first"):
        select_stage_model(stores, "stage3")
    with pytest.raises(FileNotFoundError, match=r"no training stage has a model package yet .*run `kedro run`"):
        select_stage_model(_stores(tmp_path / "empty", {}))
    with pytest.raises(ValueError, match="must be auto or one of stage1, stage2, stage3; got 'stage4'"):
        select_stage_model(stores, "stage4")


def test_model_stage_parameter_is_checked() -> None:
    assert ThresholdsParams().model_stage == "auto"
    with pytest.raises(ParameterError, match=r"thresholds.model_stage: Value error, must be auto \(the stage that "
                                             r"trained last\) or one of stage1, stage2, stage3 \(got 'stage_2'\)"):
        validate_parameters({"thresholds": {"model_stage": "stage_2"}})
