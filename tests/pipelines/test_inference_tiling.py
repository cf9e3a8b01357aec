"""The inference node hands ``inference.tile_overlap`` to a tile-mode model and records it (no Kedro run needed).

Against the code before tiling: ``InferenceParams`` refused ``tile_overlap`` (unknown key), so this failed at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from defect_pipeline.config import InferenceParams, RuntimeParams
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.package import ModelPackage, ModelStore
from defect_pipeline.ml.predict import Predictor
from defect_pipeline.pipelines.inference.nodes import list_input_images, predict
from tests.conftest import make_tiny_package

LABELS = LabelSpace(("crack", "spot"), has_good=True)


def test_a_tile_model_predicts_full_size_masks_at_the_configured_overlap(tmp_path: Path) -> None:
    folder = make_tiny_package(LABELS, image_size=64, input_mode="tile").save(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    image = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    Image.fromarray(image).save(images / "a.png")
    params = InferenceParams(input_dir=str(images), checkpoint=str(folder), tile_overlap=0.5, write_overlays=False)
    frame, masks, _, summary = predict(list_input_images(params), ModelStore(str(tmp_path / "none")), params,
                                       RuntimeParams())
    assert summary["model"]["input_mode"] == "tile" and summary["model"]["tile_overlap"] == 0.5
    assert (frame.loc[0, "height"], frame.loc[0, "width"]) == (150, 200)
    mask = np.asarray(masks["a"]())
    (expected,) = Predictor(ModelPackage.load(folder), tile_overlap=0.5).predict([image])
    np.testing.assert_array_equal(mask, expected.mask)
    assert InferenceParams().tile_overlap == 0.25
