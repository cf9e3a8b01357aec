"""The untrusted-checkpoint fixture really is an exploit, and every project path that reads a checkpoint refuses it.

First the proof: loaded unsafely — ``weights_only=False``, or the argument left unset while
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` — the file runs ``touch <marker>`` (so a merely corrupt file
could not pass these tests). Then, with that variable set, each load path of the project (engine
resume, ``stageN.init_from`` file, ``model.checkpoint_path``, checkpoint inspection, model-package
and inference-checkpoint loading) refuses it with a clear error and the marker is never written.

Checked by mutation: with ``safe_torch_load`` calling ``torch.load`` without ``weights_only=True``,
every refusal test here fails (the marker is written; the environment variable turns the default
into an unsafe load).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from defect_pipeline.config import StageParams
from defect_pipeline.ml.checkpoint import CheckpointError
from defect_pipeline.ml.inspection import describe, inventory
from defect_pipeline.ml.model_use import load_member
from defect_pipeline.ml.models import create_model
from defect_pipeline.ml.package import ModelPackage
from defect_pipeline.ml.stage import initial_weights
from tests.conftest import CodeRunningPickle
from tests.ml.test_engine import config, run

REFUSED = r"weights_only=True\): corrupt files and pickles that would run code are refused"


@pytest.fixture
def evil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(a checkpoint-looking pickle that runs ``touch marker`` when unpickled, the marker's path)."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    path = tmp_path / "evil" / "last.pt"
    path.parent.mkdir()
    torch.save({"model": CodeRunningPickle(marker), "state_dict": CodeRunningPickle(marker),
                "model_meta": {"backbone": "resnet18"}, "epoch": 1}, path)
    return path, marker


def test_the_fixture_runs_code_when_loaded_unsafely(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    torch.load(path, weights_only=False)
    assert marker.is_file(), "the untrusted-checkpoint fixture is not an exploit: the refusal tests would prove nothing"
    marker.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that the variable forces weights_only=False
        torch.load(path)  # the argument left unset: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 makes it unsafe
    assert marker.is_file(), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 did not make a default torch.load unsafe"


def _engine_resume(path: Path, tmp_path: Path) -> None:
    run(path.parent, config(epochs=1))  # the folder's last.pt is the exploit


def _stage_init_from_file(path: Path, tmp_path: Path) -> None:
    initial_weights("stage2", StageParams(init_from=str(path)), None)


def _backbone_checkpoint_path(path: Path, tmp_path: Path) -> None:
    create_model("resnet18", num_image_classes=3, num_seg_classes=3, seg_mode="multiclass", decoder_channels=32,
                 image_size=64, checkpoint_path=str(path))


def _inspect_one(path: Path, tmp_path: Path) -> None:
    describe(path)


def _package_from_a_checkpoint(path: Path, tmp_path: Path) -> None:
    ModelPackage.from_path(path)


def _inference_checkpoint(path: Path, tmp_path: Path) -> None:
    load_member(str(path))


@pytest.mark.parametrize("load", [_engine_resume, _stage_init_from_file, _backbone_checkpoint_path, _inspect_one,
                                  _package_from_a_checkpoint, _inference_checkpoint], ids=lambda f: f.__name__[1:])
def test_every_load_path_refuses_the_exploit_and_it_never_runs(evil: tuple[Path, Path], tmp_path: Path,
                                                               load) -> None:
    path, marker = evil
    with pytest.raises(CheckpointError, match=REFUSED) as error:
        load(path, tmp_path)
    assert str(path) in str(error.value)
    assert not marker.exists(), f"{load.__name__}: unpickling ran code"


def test_an_inventory_lists_the_exploit_as_refused_and_it_never_runs(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    rows = inventory(path.parent)  # the folder holds only the exploit
    assert [(r["file"], r["kind"]) for r in rows] == [("last.pt", "unreadable")]
    assert "is blocked" in rows[0]["error"] and "weights_only=True" in rows[0]["error"]  # (cut at 300 characters)
    assert not marker.exists()
