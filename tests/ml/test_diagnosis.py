"""The curve diagnosis on synthetic histories with known problems, none on a clean one, and the default demo run's.

The findings read from predictions and per-task losses, and the commands, have their own tests
(``test_diagnosis_findings.py``, ``test_diagnosis_commands.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from defect_pipeline.config import validate_parameters
from defect_pipeline.ml.diagnosis import DiagnosisConfig, diagnose, render_diagnosis_markdown
from tests.conftest import REPO_ROOT


def history(train_loss, val_loss, score, lr=None, dropout=None) -> pd.DataFrame:
    n = len(train_loss)
    lr = lr if lr is not None else list(np.linspace(1e-3, 1e-4, n))
    frame = pd.DataFrame({"epoch": range(1, n + 1), "global_step": [10 * (i + 1) for i in range(n)],
                          "train_loss": train_loss, "val_loss": val_loss, "val_combined_score": score, "lr_head": lr})
    if dropout is not None:
        frame["dropout"] = dropout
    return frame


def kinds(report: dict, severity: tuple[str, ...] = ("warning", "alert")) -> set[str]:
    return {f["kind"] for f in report["findings"] if f["severity"] in severity}


def test_a_clean_converging_curve_has_no_warning() -> None:
    n = 10
    train = list(1.0 * np.exp(-0.3 * np.arange(n)) + 0.2)
    val = [t * 1.05 for t in train]
    score = list(0.8 - 0.5 * np.exp(-0.4 * np.arange(n)))
    report = diagnose(history(train, val, score))
    assert report["healthy"] and kinds(report) == set()
    assert kinds(report, ("info",)) == {"still_improving", "convergence_speed"}


def test_overfitting_gives_a_gap_alert_with_the_first_epoch_and_advice() -> None:
    train = [1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08]
    val = [1.0, 0.75, 0.6, 0.55, 0.56, 0.6, 0.66, 0.7]
    score = [0.3, 0.45, 0.55, 0.6, 0.61, 0.6, 0.6, 0.59]
    report = diagnose(history(train, val, score))
    gap = next(f for f in report["findings"] if f["kind"] == "generalization_gap")
    assert gap["severity"] == "alert" and gap["evidence"]["ratio"] > 1.5
    assert gap["evidence"]["first_epoch_above_warn"] == 3  # 0.6 / 0.5 = 1.2 reaches the warning level
    assert "dropout" in gap["recommendation"] and "weight_decay" in gap["recommendation"]
    assert not report["healthy"]


def test_a_plateau_at_a_decayed_lr_recommends_raising_eta_min() -> None:
    n = 10
    score = [0.3, 0.5, 0.6, 0.65, 0.652, 0.6525, 0.652, 0.6522, 0.652, 0.6521]
    lr = list(1e-3 * (0.5 ** np.arange(n)))  # 1e-3 → 2e-6
    train = list(np.linspace(1.0, 0.4, n))
    report = diagnose(history(train, [t * 1.05 for t in train], score, lr=lr))
    plateau = next(f for f in report["findings"] if f["kind"] == "plateau")
    assert plateau["evidence"]["best_epoch"] == 5 and plateau["evidence"]["epochs_without_improvement"] == 5
    assert plateau["evidence"]["lr_at_plateau"] == lr[4]
    assert "eta_min_ratio" in plateau["recommendation"]


def test_a_plateau_at_a_high_lr_recommends_a_lower_lr() -> None:
    score = [0.3, 0.5, 0.55, 0.55, 0.5505, 0.55, 0.5502]
    train = list(np.linspace(1.0, 0.6, 7))
    report = diagnose(history(train, train, score, lr=[1e-3] * 7))
    plateau = next(f for f in report["findings"] if f["kind"] == "plateau")
    assert "lower lr" in plateau["recommendation"]


def test_divergence_is_an_alert_naming_the_epochs() -> None:
    train = [1.0, 0.6, 0.4, 0.5, 0.9, 1.4]
    report = diagnose(history(train, train, [0.3, 0.4, 0.5, 0.45, 0.3, 0.2]))
    divergence = next(f for f in report["findings"] if f["kind"] == "divergence")
    assert divergence["severity"] == "alert"
    assert divergence["evidence"]["best_epoch"] == 3 and divergence["evidence"]["last_epoch"] == 6
    assert "lower lr" in divergence["recommendation"]
    nan = diagnose(history([1.0, 0.5, float("nan")], [1.0, 0.5, float("nan")], [0.1, 0.2, 0.0]))
    assert "non_finite" in kinds(nan)


def test_oscillation_is_found_in_a_zigzag() -> None:
    score = [0.4, 0.5, 0.42, 0.52, 0.43, 0.53, 0.44, 0.54]
    train = list(np.linspace(1.0, 0.5, 8))
    report = diagnose(history(train, train, score), DiagnosisConfig(plateau_epochs=10))
    assert "oscillation" in kinds(report)


def test_dropout_switch_compares_volatility_before_and_after() -> None:
    score = [0.3, 0.45, 0.35, 0.5, 0.4, 0.55, 0.56, 0.57, 0.575, 0.58]
    dropout = [0.0] * 5 + [0.2] * 5
    steps = pd.DataFrame({"step": range(1, 101), "epoch": np.repeat(range(1, 11), 10),
                          "dropout": [0.0] * 47 + [0.2] * 53})
    train = list(np.linspace(1.0, 0.5, 10))
    report = diagnose(history(train, train, score, dropout=dropout), steps=steps)
    switch = next(f for f in report["findings"] if f["kind"] == "dropout_switch")
    assert switch["evidence"]["switch_step"] == 48 and switch["evidence"]["switch_epoch"] == 5
    assert switch["evidence"]["volatility_after"] < switch["evidence"]["volatility_before"]
    assert "steadied" in switch["recommendation"]


def test_markdown_lists_every_finding() -> None:
    train = [1.0, 0.6, 0.4, 0.5, 0.9, 1.4]
    report = diagnose(history(train, train, [0.3, 0.4, 0.5, 0.45, 0.3, 0.2]), stopped_early=True)
    text = render_diagnosis_markdown(report, title="stage2")
    assert "ALERT: divergence" in text and "INFO: early_stopping" in text and "What to change" in text


DEMO = Path(__file__).parent / "fixtures" / "demo_default"


@pytest.mark.parametrize(("stage", "expected", "next_command"), [
    ("stage1", {"convergence_speed"}, None),
    ("stage2", {"plateau", "convergence_speed", "dropout_switch"},
     "kedro run --pipeline=stage2 --params stage2.eta_min_ratio=0.1,stage2.resume=false"),
    ("stage3", {"underfitting"},
     "kedro run --pipeline=stage3 --params stage3.lr=0.0006,stage3.backbone_lr=0.0003,stage3.resume=false"),
])
def test_the_default_demo_run_gets_sensible_findings(stage: str, expected: set, next_command: str | None) -> None:
    """The histories of a default ``kedro run`` on the demo data (conf/base, with ``train_accuracy``): no
    collapse (the model recognises every class), no overfitting alarm from stage 1's 2-epoch noise, stage 2's
    plateau at a decayed LR with the command that raises ``eta_min_ratio``, stage 3's underfitting."""
    from defect_pipeline.ml.stage import stage_rerun_target  # here: the tests above also run on older code

    params = {}
    for path in sorted((REPO_ROOT / "conf/base").glob("parameters*.yml")):
        params.update(yaml.safe_load(path.read_text()))
    blocks = validate_parameters(params)
    history = pd.read_csv(DEMO / f"{stage}_history.csv")
    report = diagnose(history, DiagnosisConfig.from_params(blocks["diagnosis"]),
                      target=stage_rerun_target(stage, blocks[stage], blocks["model"], input_mode_used="resize"))
    assert {f["kind"] for f in report["findings"]} == expected
    assert report["next_command"] == next_command
