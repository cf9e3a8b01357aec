"""`kedro run --pipeline=inspect_checkpoints` with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 over a pickle that runs code:
listed as refused, refused when chosen for details, and its code never runs.

The reliability table says every load path runs with that variable; the inspection pipeline was
only tested without it (tests/pipelines/test_inspect_checkpoints.py). The test first shows that the
file does run code when loaded unsafely. Checked by mutation: with ``safe_torch_load`` leaving
``weights_only`` unset, the variable makes the load unsafe and this test fails on the marker file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from defect_pipeline.ml.checkpoint import CheckpointError
from tests.conftest import CodeRunningPickle, run_kedro

pytestmark = pytest.mark.slow


def test_inspection_refuses_a_code_running_pickle_under_force_no_weights_only(kedro_project: Path, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    folder, marker = tmp_path / "models", tmp_path / "pwned"
    (folder / "stage1").mkdir(parents=True)
    evil = folder / "stage1/last.pt"
    torch.save({"model": CodeRunningPickle(marker), "model_meta": {"backbone": "resnet18"}, "kind": "last"}, evil)
    torch.load(evil, weights_only=False)
    assert marker.is_file(), "the file is not an exploit: the test would prove nothing"
    marker.unlink()

    run_kedro(kedro_project, "inspect_checkpoints", params={"inspect": {"path": str(folder)}})
    inventory = pd.read_csv(kedro_project / "data/08_reporting/checkpoints/inventory.csv")
    assert inventory[["file", "kind"]].values.tolist() == [["stage1/last.pt", "unreadable"]]
    assert "is blocked" in inventory.loc[0, "error"] and "weights_only=True" in inventory.loc[0, "error"]
    assert not marker.exists(), "listing the folder ran the pickle's code"

    with pytest.raises(CheckpointError, match=rf"cannot load checkpoint {evil}: .*pickles that would run code are "
                                              "refused"):
        run_kedro(kedro_project, "inspect_checkpoints",
                  params={"inspect": {"path": str(folder), "checkpoint": "stage1/last.pt"}})
    assert not marker.exists(), "detailing the checkpoint ran the pickle's code"
