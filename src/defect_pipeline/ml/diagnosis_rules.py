"""Diagnosis findings read from what a model predicts and how each loss moves, as pure functions of the history.

Each function takes the epoch history (one row per epoch, the columns of
:func:`defect_pipeline.ml.engine.loop._epoch_row`), the :class:`DiagnosisConfig` thresholds (defined
here, used through :mod:`defect_pipeline.ml.diagnosis`) and a
:class:`~defect_pipeline.ml.diagnosis_commands.Current` (the stage's settings, to build the changes of
its actions) and returns a :class:`Finding` or None:

* :func:`find_collapse` — degenerate predictions at the last epoch: at most one image class ever
  predicted right (its F1 alone above ``collapse_tolerance``; when the accuracy equals the share
  that F1 implies, that class for every image) and/or every defect class's IoU at or below it
  (no defect pixel found). Logged per-class metrics only: ``val_f1/<class>``, ``val_iou/<class>``.
* :func:`find_accuracy_gap` — training accuracy above validation accuracy by ``accuracy_gap``, at the
  last epoch and on average over the last ``trend_epochs``.
* :func:`find_relax_regularisation` — no generalisation gap (val/train loss < ``gap_warn``) but a
  training loss that is high (above ``high_loss_ratio`` of its first epoch, or training accuracy
  below ``underfit_accuracy``) and flat (changed by less than ``flat_fraction`` over the last
  ``trend_epochs`` epochs), while dropout, weight decay or label smoothing are on.
* :func:`find_loss_imbalance` — one task's training loss flat (or rising) while the other's fell by at least
  ``falling_fraction`` over the last ``trend_epochs`` epochs (``train_cls_loss`` / ``train_seg_loss``).
* :func:`find_convergence_speed` — epochs until the monitored metric first reached
  ``convergence_fraction`` of its best value (info).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np
import pandas as pd

from defect_pipeline.ml.diagnosis_commands import Action, Current, RerunTarget, scaled


@dataclass(frozen=True)
class DiagnosisConfig:
    """The diagnosis thresholds (the ``diagnosis`` parameter block's fields; defaults: docs/diagnostics.md)."""

    monitor: str = "val_combined_score"
    mode: Literal["max", "min"] = "max"
    gap_warn: float = 1.2
    gap_alert: float = 1.5
    min_delta: float = 1e-3
    plateau_epochs: int = 3
    divergence_factor: float = 1.5
    oscillation_ratio: float = 0.7
    lr_decayed_fraction: float = 0.2
    collapse_tolerance: float = 0.01
    trend_epochs: int = 5
    flat_fraction: float = 0.05
    falling_fraction: float = 0.2
    high_loss_ratio: float = 0.5
    underfit_accuracy: float = 0.9
    accuracy_gap: float = 0.1
    convergence_fraction: float = 0.9

    @classmethod
    def from_params(cls, params: Any, *, monitor: str | None = None, mode: str | None = None) -> DiagnosisConfig:
        """The config from any object with these fields as attributes (the ``diagnosis`` parameter block).

        ``monitor`` / ``mode``, when given, replace the block's own (a training stage diagnoses the
        metric its early stopping monitors).
        """
        values = {f.name: getattr(params, f.name) for f in fields(cls)}
        return cls(**{**values, "monitor": monitor or values["monitor"], "mode": mode or values["mode"]})


@dataclass
class Finding:
    """One finding: what was seen (message, evidence) and what to do (recommendation, actions)."""

    kind: str
    severity: Literal["info", "warning", "alert"]
    message: str
    recommendation: str
    evidence: dict[str, Any] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)

    def to_dict(self, target: RerunTarget | None) -> dict[str, Any]:
        out = asdict(self)
        out["actions"] = [action.to_dict(target) for action in self.actions]
        return out


def rounded(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(f"{float(value):.6g}")
    return value


def relative_fall(values: pd.Series | np.ndarray, epochs: int) -> float | None:
    """How much a loss fell over its last ``epochs`` epochs, as a fraction of where it was; None if unknown."""
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    if len(array) < 3:
        return None
    start, end = array[max(len(array) - 1 - epochs, 0)], array[-1]
    return None if start <= 0 else float((start - end) / start)


def regularise_actions(now: Current) -> list[Action]:
    """What the overfitting findings recommend: more dropout and weight decay, more augmentation, stop earlier."""
    return [
        Action("raise dropout.rate and weight_decay",
               {**now.change("dropout.rate", lambda r: 0.1 if r == 0 else min(round(r + 0.1, 2), 0.5)),
                **now.change("weight_decay", lambda w: 0.05 if w == 0 else scaled(3, high=0.3)(w))}),
        Action("add or strengthen augmentation (augmentation.recipe in conf/<env>/parameters_training.yml: "
               "a list, which --params cannot pass)"),
        Action("stop earlier: the best checkpoint is kept, a lower early_stopping.patience saves the epochs after it",
               now.change("early_stopping.patience", scaled(0.5, low=1))),
    ]


# --- collapse -----------------------------------------------------------------------------------------------

def _image_collapse(row: pd.Series, f1_columns: list[str], tolerance: float) -> dict[str, Any] | None:
    """At most one image class predicted right (one F1 above ``tolerance``): its name, F1, implied share."""
    if len(f1_columns) < 2:
        return None
    hits = [c for c in f1_columns if float(row[c]) > tolerance]
    if len(hits) > 1 or (hits and float(row[hits[0]]) >= 1 - tolerance):  # >1 class, or a one-class val set
        return None
    if not hits:
        return {"image_class": None, "image_class_f1": 0.0}
    f1 = float(row[hits[0]])
    # predicting class k for all N images: TP = n_k, FP = N - n_k, so F1 = 2 n_k / (n_k + N), share = F1 / (2 - F1)
    out = {"image_class": hits[0].split("/", 1)[1], "image_class_f1": rounded(f1),
           "implied_share": rounded(f1 / (2 - f1))}
    if "val_accuracy" in row.index and math.isfinite(float(row["val_accuracy"])):
        accuracy = float(row["val_accuracy"])
        out["val_accuracy"] = rounded(accuracy)
        out["every_image_that_class"] = bool(abs(accuracy - f1 / (2 - f1)) <= tolerance)
    return out


def _seg_collapse(row: pd.Series, iou_columns: list[str], tolerance: float) -> dict[str, Any] | None:
    """Every defect class's IoU at most ``tolerance``: the largest of them, per class."""
    if not iou_columns or any(float(row[c]) > tolerance for c in iou_columns):
        return None
    return {"defect_iou": {c.split("/", 1)[1] if "/" in c else c: rounded(float(row[c])) for c in iou_columns}}


def find_collapse(history: pd.DataFrame, cfg: DiagnosisConfig, now: Current) -> Finding | None:
    """Degenerate predictions at the last epoch (see the module docstring), with what addresses them."""
    tol = cfg.collapse_tolerance
    f1_columns = sorted(c for c in history.columns if c.startswith("val_f1/"))
    iou_columns = sorted(c for c in history.columns if c.startswith("val_iou/") and c != "val_iou/background")
    if not iou_columns and "val_miou_defects" in history.columns:
        iou_columns = ["val_miou_defects"]

    def state(row: pd.Series) -> tuple[dict | None, dict | None]:
        return _image_collapse(row, f1_columns, tol), _seg_collapse(row, iou_columns, tol)

    image, seg = state(history.iloc[-1])
    if image is None and seg is None:
        return None
    since = int(history["epoch"].iloc[-1])
    for index in range(len(history) - 2, -1, -1):  # back while the same sides were collapsed
        earlier = state(history.iloc[index])
        if (earlier[0] is None) != (image is None) or (earlier[1] is None) != (seg is None):
            break
        since = int(history["epoch"].iloc[index])
    parts = []
    if image is not None:
        name = image["image_class"]
        if name is None:
            parts.append("no validation image is classified right")
        elif image.get("every_image_that_class"):
            parts.append(f"it predicts {name!r} for every validation image (accuracy {image['val_accuracy']:.3f} = "
                         f"the share of {name!r} its F1 {image['image_class_f1']:.3f} implies; every other class F1 0)")
        else:
            parts.append(f"{name!r} is the only image class it ever predicts right (every other class F1 <= {tol})")
    if seg is not None:
        parts.append(f"it finds no defect pixel (IoU <= {tol} for every defect class: "
                     + ", ".join(f"{k} {v:.3f}" for k, v in seg["defect_iou"].items()) + "), i.e. background "
                     "everywhere or defects in the wrong places")
    evidence = {"image": image is not None, "segmentation": seg is not None, "since_epoch": since,
                "last_epoch": int(history["epoch"].iloc[-1]), "tolerance": tol, **(image or {}), **(seg or {})}
    if "val_macro_f1" in history.columns:
        evidence["val_macro_f1"] = rounded(float(history["val_macro_f1"].iloc[-1]))
    return Finding(
        "collapse", "alert",
        f"the model's predictions are degenerate since epoch {since}: " + "; ".join(parts),
        "make the rare classes count: class-balanced loss weights, crops at native resolution so small defects "
        "keep their pixels, a larger input size; a lower lr or longer warmup does not fix this",
        evidence, _collapse_actions(now, image is not None, seg is not None))


def _collapse_actions(now: Current, image: bool, seg: bool) -> list[Action]:
    actions = []
    if now("loss.class_weights") != "balanced":
        actions.append(Action("weight the classification loss by inverse class frequency (class-balanced)",
                              now.set("loss.class_weights", "balanced")))
    if seg and now("loss.dice_weight") == 0:
        actions.append(Action("turn the Dice term of the segmentation loss on: it weighs every defect class "
                              "equally, whatever its pixel share", {"loss.dice_weight": 1.0}))
    used = now.target.input_mode_used if now.target is not None else None
    mode = used or now("model.input_mode")
    if mode == "crop":
        crop = {**now.change("model.crop.scale", lambda s: 1.0 if s < 1.0 else None),
                **(now.change("model.crop.defect_rate", lambda r: 0.8 if r < 0.8 else None) if seg else {})}
        if crop:
            actions.append(Action("crops at native resolution, more of them placed on defects (class-balanced "
                                  "sampling of defect pixels)", crop))
    else:
        actions.append(Action("train on crops at native resolution instead of whole images squeezed to image_size "
                              "(small defects keep their pixels)",
                              {"model.input_mode": "crop", "model.crop.scale": 1.0} if now.target is not None else {}))
    actions.append(Action("a larger input size (more pixels per defect)",
                          now.change("model.image_size", scaled(2, high=4096))))
    return actions


# --- gaps and regularisation --------------------------------------------------------------------------------

def find_accuracy_gap(history: pd.DataFrame, cfg: DiagnosisConfig, now: Current) -> Finding | None:
    """Training accuracy above validation accuracy by ``accuracy_gap`` or more at the last epoch and on average
    over the last ``trend_epochs`` epochs (one epoch's validation noise is no gap)."""
    if not {"train_accuracy", "val_accuracy"} <= set(history.columns):
        return None
    gaps = (history["train_accuracy"] - history["val_accuracy"]).astype(float)
    gap, recent = float(gaps.iloc[-1]), float(gaps.iloc[-cfg.trend_epochs:].mean())
    if not (math.isfinite(gap) and math.isfinite(recent)) or min(gap, recent) < cfg.accuracy_gap:
        return None
    first = int(history["epoch"][gaps >= cfg.accuracy_gap].iloc[0])
    train, val = float(history["train_accuracy"].iloc[-1]), float(history["val_accuracy"].iloc[-1])
    return Finding(
        "accuracy_gap", "warning",
        f"training accuracy {train:.3f} is {gap:.3f} above validation accuracy {val:.3f} at epoch "
        f"{int(history['epoch'].iloc[-1])} (at least {cfg.accuracy_gap} since epoch {first}; training accuracy "
        "is measured with dropout and augmentation on, so the true gap is larger)",
        "the model memorises the training images: regularise more (dropout.rate, weight_decay, augmentation) "
        "or keep an earlier checkpoint",
        {"train_accuracy": rounded(train), "val_accuracy": rounded(val), "gap": rounded(gap),
         "mean_gap_recent": rounded(recent), "trend_epochs": cfg.trend_epochs, "first_epoch_above": first,
         "threshold": cfg.accuracy_gap},
        regularise_actions(now))


def find_relax_regularisation(history: pd.DataFrame, cfg: DiagnosisConfig, now: Current) -> Finding | None:
    """Underfitting with no generalisation gap while regularisation is on: relax it."""
    if not {"train_loss", "val_loss"} <= set(history.columns) or len(history) < 3:
        return None
    train = history["train_loss"].astype(float).to_numpy()
    val_last = float(history["val_loss"].iloc[-1])
    if not (math.isfinite(train[-1]) and math.isfinite(val_last) and train[-1] > 0 and train[0] > 0):
        return None
    ratio, fall = val_last / train[-1], relative_fall(train, cfg.trend_epochs)
    accuracy = float(history["train_accuracy"].iloc[-1]) if "train_accuracy" in history.columns else None
    high = (accuracy is not None and accuracy < cfg.underfit_accuracy) or train[-1] >= cfg.high_loss_ratio * train[0]
    if ratio >= cfg.gap_warn or fall is None or abs(fall) >= cfg.flat_fraction or not high:  # a rise is no plateau
        return None
    relax = {**now.change("dropout.rate", lambda r: 0.0 if r <= 0.05 else round(r / 2, 3)),
             **now.change("weight_decay", scaled(0.1)),
             **now.change("loss.label_smoothing", lambda s: 0.0)}
    if now.target is not None and not relax:
        return None  # nothing to relax: the underfitting finding's capacity/lr advice applies
    evidence = {"val_train_loss_ratio": rounded(ratio), "train_loss_fall": rounded(fall),
                "trend_epochs": cfg.trend_epochs, "first_train_loss": rounded(train[0]),
                "last_train_loss": rounded(train[-1])}
    if accuracy is not None:
        evidence["train_accuracy"] = rounded(accuracy)
    level = f"training accuracy {accuracy:.3f}" if accuracy is not None and accuracy < cfg.underfit_accuracy else \
        f"training loss still {train[-1] / train[0]:.0%} of its first epoch's"
    return Finding(
        "relax_regularisation", "warning",
        f"the model underfits: {level}, and the training loss changed by only {-fall:+.1%} over the last "
        f"{cfg.trend_epochs} epochs, while validation loss is just {ratio:.2f}x the training loss (below "
        f"{cfg.gap_warn}): regularisation holds back a model that does not overfit",
        "lower dropout.rate, weight_decay (and label_smoothing), and use lighter augmentation",
        evidence,
        [Action("relax regularisation", relax),
         Action("lighter augmentation (fewer or weaker transforms in augmentation.recipe, "
                "conf/<env>/parameters_training.yml)")])


# --- task balance and speed ---------------------------------------------------------------------------------

def find_loss_imbalance(history: pd.DataFrame, cfg: DiagnosisConfig, now: Current) -> Finding | None:
    """One task's training loss stalls while the other falls: give the stalled task more weight."""
    columns = {"classification": "train_cls_loss", "segmentation": "train_seg_loss"}
    if not set(columns.values()) <= set(history.columns) or len(history) < 3:
        return None
    falls = {task: relative_fall(history[col], cfg.trend_epochs) for task, col in columns.items()}
    for stalled, moving in (("classification", "segmentation"), ("segmentation", "classification")):
        values = history[columns[stalled]].astype(float).to_numpy()
        if falls[stalled] is None or falls[moving] is None or values[0] <= 0:
            continue
        still_high = values[-1] >= cfg.high_loss_ratio * values[0]
        if falls[stalled] < cfg.flat_fraction and falls[moving] >= cfg.falling_fraction and still_high:
            return Finding(
                "rebalance_loss_weights", "warning",
                f"the {stalled} loss fell {falls[stalled]:.1%} over the last {cfg.trend_epochs} epochs while the "
                f"{moving} loss fell {falls[moving]:.1%}: the {moving} task takes the updates",
                f"give the {stalled} loss more weight ({'alpha' if stalled == 'classification' else 'beta'})",
                {"stalled": stalled, "stalled_fall": rounded(falls[stalled]), "other_fall": rounded(falls[moving]),
                 "stalled_loss_first": rounded(values[0]), "stalled_loss_last": rounded(values[-1]),
                 "trend_epochs": cfg.trend_epochs, "weighting": now("loss.weighting")},
                [Action(f"double the {stalled} weight", _reweight(history, now, stalled))])
    return None


def _reweight(history: pd.DataFrame, now: Current, stalled: str) -> dict[str, Any]:
    """The loss-weight changes that double the stalled task's weight, for the stage's weighting."""
    task = "alpha" if stalled == "classification" else "beta"
    weighting = now("loss.weighting")
    if weighting == "fixed":
        return now.change(f"loss.{task}", scaled(2))
    if weighting == "dynamic":
        return {**now.change(f"loss.{task}_start", scaled(2)), **now.change(f"loss.{task}_end", scaled(2))}
    if weighting == "uncertainty":  # learned weights: fix them where they ended, the stalled one doubled
        ended = {w: float(history[f"loss_weight_{w}"].iloc[-1]) if f"loss_weight_{w}" in history.columns else 1.0
                 for w in ("alpha", "beta")}
        ended[task] *= 2
        return {"loss.weighting": "fixed", **{f"loss.{w}": float(f"{v:.2g}") for w, v in ended.items()}}
    return {}


def find_convergence_speed(history: pd.DataFrame, cfg: DiagnosisConfig) -> Finding | None:
    """Epochs until the monitored metric first reached ``convergence_fraction`` of its best (info).

    ``max`` mode: ``fraction x best``; ``min`` mode (a loss): ``fraction`` of the way from the first
    epoch's value to the best.
    """
    if cfg.monitor not in history.columns or len(history) < 2:
        return None
    values = history[cfg.monitor].astype(float)
    finite = values[np.isfinite(values)]
    if finite.empty:
        return None
    first = float(finite.iloc[0])
    if cfg.mode == "max":
        best = float(finite.max())
        if best <= 0:
            return None
        target, reached = cfg.convergence_fraction * best, finite >= cfg.convergence_fraction * best
        rule = f"{cfg.convergence_fraction:.0%} of its best {best:.4g}"
    else:
        best = float(finite.min())
        if best >= first:
            return None
        target = first - cfg.convergence_fraction * (first - best)
        reached = finite <= target
        rule = f"{cfg.convergence_fraction:.0%} of the way from {first:.4g} to its best {best:.4g}"
    epochs = history["epoch"].astype(int)
    epoch, last = int(epochs[reached[reached].index[0]]), int(epochs.iloc[-1])
    best_epoch = int(epochs[finite.idxmax() if cfg.mode == "max" else finite.idxmin()])
    if best_epoch == int(epochs[finite.index[0]]):
        return None  # never improved on the first epoch: no convergence to time
    return Finding(
        "convergence_speed", "info",
        f"{cfg.monitor} reached {rule} ({target:.4g}) at epoch {epoch} of {last} ({epoch / last:.0%} of the epochs); "
        f"its best came at epoch {best_epoch}",
        "nothing to change: compare it across runs (a run that gets there in the first few epochs and then "
        "creeps could be shorter; one that gets there only at the end was still learning)",
        {"epochs_to_fraction": epoch, "fraction": cfg.convergence_fraction, "target": rounded(target),
         "best_value": rounded(best), "best_epoch": best_epoch, "last_epoch": last})
