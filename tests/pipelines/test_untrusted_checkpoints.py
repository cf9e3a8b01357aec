"""A pickle whose unpickling would run code is refused by every path that reads a checkpoint —
also with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 — and its side effect never happens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, CodeRunningPickle, run_kedro

pytestmark = pytest.mark.slow


@pytest.fixture
def evil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": CodeRunningPickle(marker), "model_meta": {}, "state_dict": CodeRunningPickle(marker)}, path)
    return path, marker


@pytest.mark.parametrize("entry", ["stage_init", "resume", "backbone_weights", "inference"])
def test_every_load_path_refuses_a_code_running_pickle(kedro_project: Path, evil: tuple[Path, Path],
                                                       entry: str) -> None:
    path, marker = evil
    run_kedro(kedro_project, "data", params=TINY)
    if entry == "stage_init":
        pipeline, params = "stage1", {**TINY, "stage1": {**TINY["stage1"], "init_from": str(path)}}
    elif entry == "resume":
        (kedro_project / "data/06_models/stage1").mkdir(parents=True, exist_ok=True)
        (kedro_project / "data/06_models/stage1/last.pt").write_bytes(path.read_bytes())
        pipeline, params = "stage1", TINY
    elif entry == "backbone_weights":
        pipeline, params = "stage1", {**TINY, "model": {**TINY["model"], "checkpoint_path": str(path)}}
    else:
        (kedro_project / "images").mkdir()
        pipeline, params = "inference", {**TINY, "inference": {"input_dir": "images", "checkpoint": str(path)}}
    with pytest.raises(Exception, match=r"weights_only=True|weights-only|refused"):
        run_kedro(kedro_project, pipeline, params=params)
    assert not marker.exists(), f"{entry}: unpickling ran code"
