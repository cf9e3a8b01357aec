"""`kedro run --pipeline=advise` reads the manifest and the machine, and changes nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.conftest import TINY, copy_project, run_kedro

pytestmark = pytest.mark.slow


def test_advise_writes_the_advice_next_to_the_configuration_and_changes_nothing(
        tiny_default_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_project(tiny_default_run, tmp_path / "project", monkeypatch)
    conf_before = {p: p.read_bytes() for p in (project / "conf").rglob("*.yml")}
    run_kedro(project, "advise", params=TINY)
    advice = json.loads((project / "data/08_reporting/advice/advice.json").read_text())
    assert advice["facts"]["train_samples"] > 0 and advice["facts"]["device"] == "cpu"
    assert advice["recommendations"]["backbone"] == "convnext_atto"  # tiny data on a CPU
    assert advice["current"]["backbone"] == "resnet18"
    assert "| backbone | convnext_atto | resnet18 |" in (project / "data/08_reporting/advice/advice.md").read_text()
    assert conf_before == {p: p.read_bytes() for p in (project / "conf").rglob("*.yml")}


def test_every_stage_logs_what_its_settings_resolved_to(tiny_default_run: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The advice is applied where a setting says ``auto`` (the sampler here), explicit values are kept (TINY's
    image size), and the stage logs which is which."""
    project = copy_project(tiny_default_run, tmp_path / "project", monkeypatch)
    with caplog.at_level(logging.INFO, logger="defect_pipeline.ml.stage"):
        run_kedro(project, "stage1", params={**TINY, "stage1": {**TINY["stage1"], "resume": False}})
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("stage1: stage1.sampler = uniform (auto: ") for m in messages)
    assert "stage1: model.image_size = 64 (set explicitly)" in messages
