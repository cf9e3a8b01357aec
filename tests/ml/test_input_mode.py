"""The ``model.input_mode: auto`` rule, the manifest facts it reads, and the keys a trained model records.

Before input modes existed every image was resized to ``image_size``; these tests fail on that
code (no :mod:`defect_pipeline.ml.input_mode`) and pin the rule: crop when resizing would shrink the
median image more than 2x, or shrink it at all and leave the median defect under 4 px.
"""

from __future__ import annotations

import pandas as pd
import pytest

from defect_pipeline.ml.input_mode import (
    InputFacts,
    input_facts,
    package_input_meta,
    resolve_input_mode,
)


@pytest.mark.parametrize(("width", "height", "defect", "size", "mode", "why"), [
    (64, 64, 10.0, 64, "resize", "does not shrink"),  # the demo: images at the input size
    (200, 200, 12.0, 160, "resize", "at most 2x"),  # NEU-Seg at 160 px: 1.25x, defects stay ~10 px
    (256, 256, None, 128, "resize", "at most 2x"),  # exactly 2x is still resized
    (600, 400, 30.0, 224, "crop", "2.7x"),  # the dataset: the longer side shrinks 2.7x
    (4000, 3000, None, 512, "crop", "7.8x"),  # factory camera, no masks measured
    (1024, 128, None, 128, "crop", "8.0x"),  # a line-scan strip: squashing it would distort it 8x
    (300, 300, 3.0, 192, "crop", "under 4 px"),  # 1.6x only, but a 3 px defect would become 1.9 px
    (300, 300, 8.0, 192, "resize", "keeps the median defect at 5.1 px"),  # 8 px defects survive 1.6x
    (100, 100, 2.0, 128, "resize", "does not shrink"),  # tiny defects, but the image is enlarged, not shrunk
])
def test_auto_crops_large_images_and_images_whose_defects_would_vanish(width, height, defect, size, mode, why):
    plan = resolve_input_mode("auto", image_size=size, median_width=width, median_height=height,
                              median_defect_px=defect)
    assert (plan.requested, plan.mode) == ("auto", mode)
    assert why in plan.reason
    assert plan.shrink == pytest.approx(max(width, height) / size, abs=0.01)


def test_auto_without_image_sizes_resizes_and_says_why() -> None:
    plan = resolve_input_mode("auto", image_size=64, median_width=None, median_height=None)
    assert plan.mode == "resize" and "no image sizes" in plan.reason and plan.shrink is None


@pytest.mark.parametrize("mode", ["resize", "crop"])
def test_an_explicit_mode_wins_over_the_rule(mode: str) -> None:
    plan = resolve_input_mode(mode, image_size=64, median_width=4000, median_height=64, median_defect_px=1.0)
    assert plan.mode == mode and "set explicitly" in plan.reason
    assert plan.to_dict()["requested"] == mode and plan.to_dict()["shrink"] == pytest.approx(62.5)


def test_thresholds_are_parameters_of_the_rule() -> None:
    common = {"image_size": 100, "median_width": 150, "median_height": 150, "median_defect_px": 7.5}  # 1.5x: 5 px
    assert resolve_input_mode("auto", **common).mode == "resize"
    assert resolve_input_mode("auto", **common, max_shrink=1.4).mode == "crop"
    assert resolve_input_mode("auto", **common, min_defect_px=6.0).mode == "crop"
    assert resolve_input_mode("auto", **common, min_defect_px=5.0).mode == "resize"  # not under 5 px
    assert resolve_input_mode("auto", **{**common, "median_defect_px": 5.0}).mode == "crop"  # 3.3 px


def test_unknown_mode_is_refused_naming_the_parameter() -> None:
    with pytest.raises(ValueError, match="model.input_mode must be one of"):
        resolve_input_mode("tile", image_size=64, median_width=64, median_height=64)


def test_facts_come_from_accepted_training_rows_and_measured_masks() -> None:
    rows = ([{"split": "train", "status": "accepted", "width": 800, "height": 600, "mask_area": 0,
              "mask_components": 0}] * 3  # defect-free: no defect size
            + [{"split": "train", "status": "accepted", "width": 800, "height": 600, "mask_area": 2 * 36,
                "mask_components": 2}] * 2  # two 36-pixel components: 6 px
            + [{"split": "train", "status": "accepted", "width": 800, "height": 600, "mask_area": 400,
                "mask_components": 1}]  # one 20 x 20 component
            + [{"split": "train", "status": "quarantined", "width": 9000, "height": 9000, "mask_area": 1,
                "mask_components": 1}] * 9
            + [{"split": "val", "status": "accepted", "width": 10, "height": 10, "mask_area": 1,
                "mask_components": 1}] * 9)
    facts = input_facts(pd.DataFrame(rows))
    assert facts == InputFacts(800.0, 600.0, 6.0)


def test_facts_without_sizes_or_masks_are_none() -> None:
    assert input_facts(pd.DataFrame({"split": ["train"], "status": ["accepted"]})) == InputFacts(None, None, None)
    sizes_only = pd.DataFrame({"split": ["train"], "status": ["accepted"], "width": [64], "height": [32]})
    assert input_facts(sizes_only) == InputFacts(64.0, 32.0, None)


def test_package_meta_is_what_the_sliding_window_predictor_reads() -> None:
    assert package_input_meta("resize") == {"input_mode": "resize"}
    assert package_input_meta("resize", scale=0.5) == {"input_mode": "resize"}  # scale only applies to crops
    assert package_input_meta("crop") == {"input_mode": "tile"}
    assert package_input_meta("crop", scale=0.5) == {"input_mode": "tile", "input_scale": 0.5}
    with pytest.raises(ValueError, match="'resize' or 'crop'"):
        package_input_meta("auto")
