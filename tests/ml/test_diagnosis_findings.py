"""The findings read from predictions and per-task losses, on synthetic histories with known problems.

Each test builds the history a real failure leaves (the columns ``history.csv`` has) and checks
the finding, its evidence and the ``kedro run`` line its actions carry. Against the code before
these findings (commit 2973795) every test here fails: ``collapse``, ``accuracy_gap``,
``relax_regularisation``, ``rebalance_loss_weights`` and ``convergence_speed`` did not exist,
nor did ``diagnose(..., target=...)`` (a TypeError), actions or commands.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from defect_pipeline.config import ModelParams, StageParams
from defect_pipeline.ml.diagnosis import DiagnosisConfig, diagnose, render_diagnosis_markdown

IMAGE_CLASSES = ("good", "crack", "scratch", "spot")


def target(stage: str = "stage2", *, model: dict | None = None, **settings):
    """The rerun target of ``stage`` with the given stage settings (validated like a parameter block)."""
    from defect_pipeline.ml.stage import stage_rerun_target  # here, so that each test fails on its own on old code

    return stage_rerun_target(stage, StageParams(**settings), ModelParams(**(model or {"image_size": 64})))


def frame(n: int, **columns) -> pd.DataFrame:
    data = {"epoch": range(1, n + 1), "global_step": [10 * (i + 1) for i in range(n)]}
    data.update({k: (list(v) if not np.isscalar(v) else [v] * n) for k, v in columns.items()})
    return pd.DataFrame(data)


def healthy_metrics(n: int) -> dict:
    """Per-class validation metrics of a model that recognises every class and finds defect pixels."""
    up = np.linspace(0.4, 0.8, n)
    return {"val_accuracy": up, "val_macro_f1": up, **{f"val_f1/{c}": up for c in IMAGE_CLASSES},
            "val_iou/background": 0.95, **{f"val_iou/{c}": up - 0.2 for c in IMAGE_CLASSES[1:]}}


def collapsed_metrics(n: int, share: float = 0.85) -> dict:
    """The model predicts 'good' for every image and background for every pixel (the issue's stage 2)."""
    f1_good = 2 * share / (1 + share)  # TP = n_good, FP = N - n_good
    return {"val_accuracy": share, "val_macro_f1": f1_good / len(IMAGE_CLASSES), "val_f1/good": f1_good,
            **{f"val_f1/{c}": 0.0 for c in IMAGE_CLASSES[1:]}, "val_iou/background": share,
            **{f"val_iou/{c}": 0.0 for c in IMAGE_CLASSES[1:]}, "val_iou": 0.0, "val_miou_defects": 0.0}


def by_kind(report: dict) -> dict[str, dict]:
    return {f["kind"]: f for f in report["findings"]}


def commands(finding: dict) -> list[str]:
    return [a["command"] for a in finding["actions"] if "command" in a]


# --- collapse --------------------------------------------------------------------------------------------------

def test_majority_class_and_background_everywhere_is_a_collapse_alert_that_outranks_the_plateau() -> None:
    n = 8
    metrics = collapsed_metrics(n)
    score = [0.5 * metrics["val_macro_f1"]] * n  # flat: the plateau the old diagnosis reported alone
    history = frame(n, train_loss=np.linspace(1.2, 0.9, n), val_loss=np.linspace(1.25, 0.95, n),
                    val_combined_score=score, lr_head=1e-3, **metrics)
    report = diagnose(history, target=target(lr=1e-3, epochs=25))
    first = report["findings"][0]
    assert first["kind"] == "collapse" and first["severity"] == "alert"
    evidence = first["evidence"]
    assert evidence["image"] and evidence["segmentation"] and evidence["since_epoch"] == 1
    assert evidence["image_class"] == "good" and evidence["every_image_that_class"] is True
    assert evidence["implied_share"] == pytest.approx(0.85)
    assert set(evidence["defect_iou"]) == {"crack", "scratch", "spot"}
    assert "'good' for every validation image" in first["message"]
    found = commands(first)
    assert found == [
        "kedro run --pipeline=stage2 --params stage2.loss.class_weights=balanced,stage2.resume=false",
        "kedro run --pipeline=training --params model.input_mode=crop,model.crop.scale=1.0,stage1.resume=false,"
        "stage2.resume=false,stage3.resume=false",
        "kedro run --pipeline=training --params model.image_size=128,stage1.resume=false,stage2.resume=false,"
        "stage3.resume=false",
    ]
    kinds = [f["kind"] for f in report["findings"]]
    assert "plateau" in kinds and kinds.index("collapse") < kinds.index("plateau")
    assert "collapse" in by_kind(report)["plateau"]["message"]
    assert report["next_command"] == found[0]


def test_collapse_since_the_epoch_it_began_and_not_before() -> None:
    healthy, collapsed = pd.DataFrame(healthy_metrics(3)), pd.DataFrame(collapsed_metrics(3), index=range(3))
    metrics = pd.concat([healthy, collapsed], ignore_index=True)
    history = frame(6, train_loss=np.linspace(1.0, 0.5, 6), val_loss=np.linspace(1.0, 0.55, 6),
                    val_combined_score=np.linspace(0.3, 0.6, 6), **{c: metrics[c] for c in metrics.columns})
    assert by_kind(diagnose(history))["collapse"]["evidence"]["since_epoch"] == 4


def test_segmentation_only_collapse_in_crop_mode_puts_more_crops_on_defects() -> None:
    n = 4
    metrics = {**healthy_metrics(n), **{f"val_iou/{c}": 0.004 for c in IMAGE_CLASSES[1:]}}
    history = frame(n, train_loss=np.linspace(1.0, 0.6, n), val_loss=np.linspace(1.0, 0.65, n),
                    val_combined_score=np.linspace(0.3, 0.4, n), **metrics)
    stage = target(model={"image_size": 256, "input_mode": "crop", "crop": {"scale": 0.5, "defect_rate": 0.5}},
                   loss={"dice_weight": 0.0, "class_weights": "balanced"})
    collapse = by_kind(diagnose(history, target=stage))["collapse"]
    assert collapse["evidence"]["segmentation"] and not collapse["evidence"]["image"]
    assert collapse["message"].count("no defect pixel") == 1
    params = [a.get("params", {}) for a in collapse["actions"]]
    assert {"stage2.loss.dice_weight": 1.0, "stage2.resume": False} in params  # class weights already balanced
    assert not any("stage2.loss.class_weights" in p for p in params)
    crop = next(p for p in params if "model.crop.scale" in p)
    assert crop["model.crop.scale"] == 1.0 and crop["model.crop.defect_rate"] == 0.8
    assert "model.input_mode" not in crop


@pytest.mark.parametrize("case", ["two_classes_recognised", "one_class_validation_set", "healthy"])
def test_no_collapse_when_predictions_are_not_degenerate(case: str) -> None:
    n = 4
    metrics = healthy_metrics(n)
    if case == "two_classes_recognised":  # weak, but it tells two classes apart and finds defect pixels
        metrics.update({"val_f1/crack": 0.0, "val_f1/scratch": 0.0, "val_f1/spot": 0.2})
    if case == "one_class_validation_set":  # only 'good' images in val, all right: nothing degenerate
        metrics.update({"val_accuracy": 1.0, "val_f1/good": 1.0, **{f"val_f1/{c}": 0.0 for c in IMAGE_CLASSES[1:]}})
    history = frame(n, train_loss=np.linspace(1.0, 0.5, n), val_loss=np.linspace(1.0, 0.55, n),
                    val_combined_score=np.linspace(0.3, 0.5, n), **metrics)
    assert "collapse" not in by_kind(diagnose(history))


# --- train >> val accuracy, relax regularisation -----------------------------------------------------------------

def test_training_accuracy_far_above_validation_is_an_overfitting_warning() -> None:
    n = 6
    history = frame(n, train_loss=np.linspace(1.0, 0.3, n), val_loss=np.linspace(1.0, 0.33, n),
                    val_combined_score=np.linspace(0.3, 0.6, n), train_accuracy=[0.5, 0.7, 0.85, 0.93, 0.97, 0.99],
                    val_accuracy=[0.5, 0.62, 0.7, 0.72, 0.72, 0.73])
    gap = by_kind(diagnose(history, target=target(dropout={"rate": 0.1}, weight_decay=0.01)))["accuracy_gap"]
    assert gap["severity"] == "warning"
    assert gap["evidence"]["gap"] == pytest.approx(0.26) and gap["evidence"]["first_epoch_above"] == 3
    assert commands(gap)[0] == ("kedro run --pipeline=stage2 --params stage2.dropout.rate=0.2,"
                                "stage2.weight_decay=0.03,stage2.resume=false")
    close = history.assign(train_accuracy=history["val_accuracy"] + 0.05)
    assert "accuracy_gap" not in by_kind(diagnose(close))
    # the default demo's stage 1 (2 epochs, frozen random backbone): 0.221 / 0.217, then 0.301 / 0.200 — one
    # epoch's jump on a 60-image validation set, at 30 % training accuracy, is noise, not overfitting
    demo = frame(2, train_loss=[5.42, 3.62], val_loss=[3.49, 2.96], val_combined_score=[0.0927, 0.0930],
                 train_accuracy=[0.221, 0.301], val_accuracy=[0.217, 0.200])
    assert "accuracy_gap" not in by_kind(diagnose(demo))


def flat_and_high(n: int = 8, ratio: float = 1.05) -> pd.DataFrame:
    train = [2.0, 1.6, 1.45, 1.42, 1.41, 1.40, 1.40, 1.39][:n]  # fell 4 % over the last 5 epochs, still 70 %
    return frame(n, train_loss=train, val_loss=[t * ratio for t in train], val_combined_score=np.linspace(0.2, 0.3, n),
                 train_accuracy=np.linspace(0.4, 0.6, n), val_accuracy=np.linspace(0.4, 0.58, n))


def test_underfitting_without_a_gap_relaxes_dropout_weight_decay_and_label_smoothing() -> None:
    stage = target(dropout={"rate": 0.3}, weight_decay=0.05, loss={"label_smoothing": 0.1})
    relax = by_kind(diagnose(flat_and_high(), target=stage))["relax_regularisation"]
    assert relax["severity"] == "warning" and relax["evidence"]["val_train_loss_ratio"] == pytest.approx(1.05)
    assert relax["evidence"]["train_loss_fall"] < 0.05 and "training accuracy 0.600" in relax["message"]
    assert relax["actions"][0]["params"] == {"stage2.dropout.rate": 0.15, "stage2.weight_decay": 0.005,
                                             "stage2.loss.label_smoothing": 0.0, "stage2.resume": False}
    assert "augmentation" in relax["actions"][1]["advice"] and "command" not in relax["actions"][1]


def test_no_relaxing_with_a_generalisation_gap_or_nothing_to_relax() -> None:
    assert "relax_regularisation" not in by_kind(diagnose(flat_and_high(ratio=1.3), target=target(weight_decay=0.05)))
    bare = target(weight_decay=0.0, dropout={"rate": 0.0})
    assert "relax_regularisation" not in by_kind(diagnose(flat_and_high(), target=bare))
    falling = flat_and_high().assign(train_loss=np.linspace(2.0, 1.0, 8))  # still falling 10 %/epoch
    assert "relax_regularisation" not in by_kind(diagnose(falling.assign(val_loss=falling["train_loss"])))
    rising = flat_and_high().assign(train_loss=np.linspace(1.0, 1.4, 8))  # a rise is divergence, not a plateau
    assert "relax_regularisation" not in by_kind(diagnose(rising.assign(val_loss=rising["train_loss"])))


# --- alpha / beta -----------------------------------------------------------------------------------------------

def stalled_classification(n: int = 8) -> pd.DataFrame:
    cls = [1.40, 1.30, 1.25, 1.24, 1.23, 1.23, 1.22, 1.22]  # 0.8 % over the last 5 epochs
    seg = list(2.0 * 0.85 ** np.arange(n))  # 15 %/epoch
    total = [c + s for c, s in zip(cls, seg, strict=True)]
    return frame(n, train_loss=total, val_loss=total, val_combined_score=np.linspace(0.2, 0.5, n),
                 train_cls_loss=cls, train_seg_loss=seg, loss_weight_alpha=0.6, loss_weight_beta=1.4)


@pytest.mark.parametrize(("loss", "expected"), [
    ({"weighting": "fixed", "alpha": 1.0}, {"stage2.loss.alpha": 2.0}),
    ({"weighting": "dynamic", "alpha_start": 1.0, "alpha_end": 0.5},
     {"stage2.loss.alpha_start": 2.0, "stage2.loss.alpha_end": 1.0}),
    ({"weighting": "uncertainty"}, {"stage2.loss.weighting": "fixed", "stage2.loss.alpha": 1.2,
                                    "stage2.loss.beta": 1.4}),
])
def test_a_stalled_classification_loss_gets_more_weight(loss: dict, expected: dict) -> None:
    finding = by_kind(diagnose(stalled_classification(), target=target(loss=loss)))["rebalance_loss_weights"]
    assert finding["evidence"]["stalled"] == "classification" and finding["evidence"]["other_fall"] > 0.2
    assert finding["actions"][0]["params"] == {**expected, "stage2.resume": False}


def test_a_stalled_segmentation_loss_gets_more_beta_and_a_converged_one_none() -> None:
    swapped = stalled_classification().rename(columns={"train_cls_loss": "train_seg_loss",
                                                       "train_seg_loss": "train_cls_loss"})
    finding = by_kind(diagnose(swapped, target=target(loss={"weighting": "fixed", "beta": 0.5})))
    assert finding["rebalance_loss_weights"]["actions"][0]["params"]["stage2.loss.beta"] == 1.0
    converged = stalled_classification().assign(train_cls_loss=[1.4, 0.5, 0.2, 0.1, 0.09, 0.09, 0.089, 0.089])
    assert "rebalance_loss_weights" not in by_kind(diagnose(converged))  # flat because it is done, not stalled


# --- convergence speed ------------------------------------------------------------------------------------------

def test_convergence_speed_counts_the_epochs_to_ninety_percent_of_the_best() -> None:
    score = [0.1, 0.5, 0.7, 0.75, 0.78, 0.8, 0.79]  # 90 % of 0.8 = 0.72: epoch 4
    history = frame(7, train_loss=np.linspace(1.0, 0.4, 7), val_loss=np.linspace(1.0, 0.42, 7),
                    val_combined_score=score)
    speed = by_kind(diagnose(history))["convergence_speed"]
    assert speed["severity"] == "info" and speed["evidence"]["epochs_to_fraction"] == 4
    assert speed["evidence"]["best_epoch"] == 6 and speed["actions"] == []
    loss = diagnose(history, DiagnosisConfig(monitor="val_loss", mode="min"))  # 1.0 → 0.42: 0.478 first at epoch 7
    assert by_kind(loss)["convergence_speed"]["evidence"]["epochs_to_fraction"] == 7


def test_markdown_ends_each_recommendation_with_its_command() -> None:
    report = diagnose(flat_and_high(), target=target(dropout={"rate": 0.3}))
    text = render_diagnosis_markdown(report, title="stage2")
    relax = text[text.index("WARNING: relax_regularisation"):]
    assert relax.index("**What to change:**") < relax.index("kedro run --pipeline=stage2 --params stage2.dropout.rate")
    assert text.index("**Run next**") < text.index("## ")
    assert "retrained after it: `kedro run --pipeline=stage3 --params stage3.resume=false`" in text
    assert "set `diagnosis.stage`" in render_diagnosis_markdown(diagnose(flat_and_high()), title="x")
