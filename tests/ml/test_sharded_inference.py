"""Batch inference over several processes: the files are sharded, the rows merged back in listing order.

Against the code before issue 16 these fail: there was no ``inference.devices`` (an unknown key) and no
:mod:`defect_pipeline.ml.sharded_inference`; inference ran in one process only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defect_pipeline.config import InferenceParams, ParameterError, RuntimeParams, TrainerParams, validate_parameters
from defect_pipeline.ml.inference import list_images
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.package import ModelStore
from defect_pipeline.ml.sharded_inference import merge_shards, shard_positions
from defect_pipeline.pipelines.inference.nodes import predict
from tests.conftest import make_tiny_package
from tests.ml.test_inference import EXTENSIONS, awkward_folder

LABELS = LabelSpace(("crack", "spot"), has_good=True)


def test_shards_cover_the_listing_once_and_merge_back_in_order() -> None:
    pending = [True, False, True, True, True, True, True]  # position 1 passes through (skipped)
    shards = [shard_positions(pending, rank, 3, batch_size=2) for rank in range(3)]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]  # whole batches of two pending files, dealt round
    assert [shard_positions(pending, rank, 2, batch_size=1) for rank in range(2)] == [[0, 1, 3, 5], [2, 4, 6]]
    rows = [(positions, [{"n": p} for p in positions], {f"m{p}": b"" for p in positions}, len(positions))
            for positions in shards]
    merged, masks, predicted = merge_shards(list(reversed(rows)), 7)  # the order the shards arrive in does not matter
    assert [row["n"] for row in merged] == list(range(7)) and len(masks) == 7 and predicted == 7
    with pytest.raises(ValueError, match="do not cover the listing exactly once"):
        merge_shards(rows[:2], 7)  # the last process's rows are missing
    with pytest.raises(ValueError, match="rank 3 is not one of 3 processes"):
        shard_positions(pending, 3, 3, batch_size=2)


def test_inference_devices_is_checked() -> None:
    assert validate_parameters({"inference": {"devices": "auto"}})["inference"].devices == "auto"
    with pytest.raises(ParameterError, match="inference.devices"):
        validate_parameters({"inference": {"devices": 0}})


def test_two_cpu_processes_write_the_same_predictions_as_one(tmp_path: Path) -> None:
    """Rows, order and values of predictions.csv and every mask are the same with 1 and 2 processes."""
    folder = make_tiny_package(LABELS).save(tmp_path / "model")
    root = awkward_folder(tmp_path / "in", tmp_path / "elsewhere/x.png")
    rng = np.random.default_rng(3)
    for i in range(5):  # more images than processes x batch, of several sizes
        Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 80 - 5 * i, 3), dtype=np.uint8)).save(root / f"n{i}.png")
    files, ignored = list_images(root, extensions=EXTENSIONS)
    inputs = {"files": files, "ignored": ignored, "input": "a folder"}
    outputs = {}
    for devices in (1, 2):
        params = InferenceParams(checkpoint=str(folder), write_overlays=False, batch_size=2, devices=devices)
        frame, masks, _, summary = predict(inputs, ModelStore(str(tmp_path / "none")), params,
                                           RuntimeParams(cpu_threads=1), trainer=TrainerParams(accelerator="cpu"))
        assert summary["device"]["processes"] == devices and summary["device"]["accelerator"] == "cpu"
        outputs[devices] = (frame.to_csv(index=False), {name: np.asarray(mask()) for name, mask in masks.items()},
                            summary["status"])
    (csv_one, masks_one, status_one), (csv_two, masks_two, status_two) = outputs[1], outputs[2]
    assert status_one == status_two == {"ok": 9, "error": 1, "skipped": 1}
    assert csv_two == csv_one
    assert csv_one.splitlines()[1].split(",")[1] == "corrupt.png"  # listing order, not shard order
    assert masks_two.keys() == masks_one.keys() and len(masks_one) == 9
    for name, mask in masks_one.items():
        np.testing.assert_array_equal(masks_two[name], mask)
