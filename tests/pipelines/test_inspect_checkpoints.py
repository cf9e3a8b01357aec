"""`kedro run --pipeline=inspect_checkpoints` on real checkpoints of a tiny run, next to a corrupt file,
a foreign state dict and a pickle that would run code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import CodeRunningPickle, run_kedro

pytestmark = pytest.mark.slow


def test_inventory_lists_every_file_and_details_the_chosen_checkpoint(tiny_default_run: Path, kedro_project: Path,
                                                                      tmp_path: Path) -> None:
    folder = tmp_path / "models"
    for stage in ("stage1", "stage3"):
        (folder / stage).mkdir(parents=True)
        for kind in ("best", "last"):
            os.symlink(tiny_default_run / f"data/06_models/{stage}/{kind}.pt", folder / stage / f"{kind}.pt")
    (folder / "corrupt.pt").write_bytes(b"\x80\x04garbage")
    torch.save({"weight": torch.zeros(3)}, folder / "foreign.pt")
    marker = tmp_path / "pwned"
    torch.save({"model": CodeRunningPickle(marker)}, folder / "evil.pt")

    run_kedro(kedro_project, "inspect_checkpoints",
              params={"inspect": {"path": str(folder), "checkpoint": "stage1/last.pt"}})
    assert not marker.exists(), "loading a checkpoint ran code"
    out = kedro_project / "data/08_reporting/checkpoints"
    inventory = pd.read_csv(out / "inventory.csv").set_index("file")
    assert sorted(inventory.index) == ["corrupt.pt", "evil.pt", "foreign.pt", "stage1/best.pt", "stage1/last.pt",
                                       "stage3/best.pt", "stage3/last.pt"]
    assert (inventory.loc[["corrupt.pt", "evil.pt", "foreign.pt"], "kind"] == "unreadable").all()
    assert "foreign file" in inventory.loc["foreign.pt", "error"]
    # the row names the call the pickle would have made (os.system is posix.system on Linux/macOS)
    assert (f"UnpicklingError: Trying to load unsupported GLOBAL {os.system.__module__}.system"
            in inventory.loc["evil.pt", "error"])
    assert inventory.loc["stage1/last.pt", "stage"] == "stage1" and inventory.loc["stage1/last.pt", "epoch"] == 2
    assert inventory.loc["stage1/last.pt", "percent_complete"] == 100.0

    details = json.loads((out / "report.json").read_text())["details"]
    assert details["architecture"]["backbone"] == "resnet18" and details["architecture"]["decoder"] == "fpn"
    params = details["parameters"]
    assert params["encoder"]["frozen"] == params["encoder"]["total"] > 0  # stage1 trains with a frozen backbone
    assert params["decoder"]["trainable"] == params["decoder"]["total"] > 0
    assert params["all"]["total"] == params["all"]["trainable"] + params["all"]["frozen"]
    assert {g["name"] for g in details["optimizer"]["param_groups"]} >= {"head"}
    assert details["classes"]["defect_classes"] == ["crack", "scratch", "spot"]
    assert len(details["manifest_hash"]) == 64
    assert details["dropout"]["global_step"] == details["global_step"]
    # the fresh project's parameters (convnext_atto, 64 px demo) differ from the tiny run's
    differences = {d["key"]: d for d in details["config_differences"]}
    assert differences["model.backbone"]["checkpoint"] == "resnet18"
    assert differences["model.backbone"]["current"] == "convnext_atto"
    markdown = (out / "report.md").read_text()
    assert "| corrupt.pt | unreadable |" in markdown and "Configuration differences" in markdown


def test_learned_uncertainties_are_reported_for_stage3(tiny_default_run: Path, kedro_project: Path) -> None:
    run_kedro(kedro_project, "inspect_checkpoints",
              params={"inspect": {"path": str(tiny_default_run / "data/06_models"), "checkpoint": "stage3/last.pt"}})
    details = json.loads((kedro_project / "data/08_reporting/checkpoints/report.json").read_text())["details"]
    assert details["loss"]["config"]["weighting"] == "uncertainty"
    assert set(details["loss"]["task_uncertainties"]) == {"cls", "seg"}
    cls = details["loss"]["task_uncertainties"]["cls"]
    assert cls["weight"] == pytest.approx(1 / cls["sigma2"])
