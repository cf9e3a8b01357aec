"""Training-curve diagnosis: what the history says went wrong, with the evidence and what to change.

:func:`diagnose` reads a stage's ``history.csv`` (one row per epoch) and, when available, its
per-step rows (``steps.csv``), and returns findings. Each finding has a ``kind``, a
``severity`` (``info`` / ``warning`` / ``alert``), a message, the evidence (epochs and values)
and a concrete recommendation naming the parameter to change:

* ``non_finite`` — a loss became NaN/inf.
* ``divergence`` — the training loss climbed well above its best (``divergence_factor``).
* ``generalization_gap`` — validation loss / training loss above ``gap_warn`` (warning) or
  ``gap_alert`` (alert) at the last epoch.
* ``plateau`` — the monitored metric has not improved by more than ``min_delta`` for
  ``plateau_epochs`` epochs; the learning rate at the plateau decides the advice (decayed → raise
  ``eta_min_ratio``; still high → lower ``lr`` / lengthen ``warmup_epochs``).
* ``oscillation`` — the monitored metric zig-zags (most successive changes flip sign, by more
  than ``min_delta``).
* ``early_stopping`` — early stopping ended the stage (info, with the best epoch).
* ``still_improving`` / ``underfitting`` — training ended while the metric was still improving,
  or the training loss barely fell.
* ``dropout_switch`` — progressive dropout: validation-metric volatility (standard deviation of
  epoch-to-epoch changes) before and after the epoch the dropout switched on.

Findings read from the predictions and the per-task losses (:mod:`defect_pipeline.ml.diagnosis_rules`):
``collapse`` (degenerate predictions; an alert that comes before every other finding),
``accuracy_gap`` (training accuracy well above validation accuracy), ``relax_regularisation``
(underfitting without a generalisation gap), ``rebalance_loss_weights`` (one task's loss stalls
while the other's falls) and ``convergence_speed`` (epochs to reach 90 % of the best, info).

Findings come alerts first, then warnings, then info. Given a
:class:`~defect_pipeline.ml.diagnosis_commands.RerunTarget` (the stage and the settings it ran
with), each recommendation's actions carry the ``kedro run ... --params ...`` line that applies
them, and the report's ``next_command`` is the first of them. A clean curve gives no warning or
alert. Thresholds are :class:`DiagnosisConfig` fields.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from defect_pipeline.ml.diagnosis_commands import Action, Current, RerunTarget, scaled
from defect_pipeline.ml.diagnosis_rules import (
    DiagnosisConfig,
    Finding,
    find_accuracy_gap,
    find_collapse,
    find_convergence_speed,
    find_loss_imbalance,
    find_relax_regularisation,
    regularise_actions,
    rounded,
)

__all__ = ["DiagnosisConfig", "Finding", "RerunTarget", "diagnose", "render_diagnosis_markdown"]


SEVERITY_ORDER = {"alert": 0, "warning": 1, "info": 2}


def _lr_column(history: pd.DataFrame) -> str | None:
    for name in ("lr_head", "lr_backbone", "lr"):
        if name in history.columns:
            return name
    return next((c for c in history.columns if c.startswith("lr_")), None)


def _best_epoch(values: pd.Series, epochs: pd.Series, mode: str, min_delta: float) -> tuple[int, float]:
    """Epoch of the last improvement by more than ``min_delta`` (the early-stopping rule)."""
    best_value, best_epoch = None, int(epochs.iloc[0])
    for epoch, value in zip(epochs, values, strict=True):
        if value is None or math.isnan(value):
            continue
        better = best_value is None or (value > best_value + min_delta if mode == "max"
                                        else value < best_value - min_delta)
        if better:
            best_value, best_epoch = float(value), int(epoch)
    return best_epoch, float("nan") if best_value is None else best_value


def _dropout_switch(history: pd.DataFrame, steps: pd.DataFrame | None) -> tuple[int | None, int | None]:
    """(step, epoch) where dropout first became > 0 after being 0, from steps or else from history."""
    for table, step_col in ((steps, "step"), (history, "global_step")):
        if table is None or "dropout" not in table.columns or len(table) < 2:
            continue
        on = table["dropout"].to_numpy() > 0
        if on[0] or not on.any():
            return None, None
        first = int(np.argmax(on))
        return (int(table[step_col].iloc[first]) if step_col in table.columns else None,
                int(table["epoch"].iloc[first]))
    return None, None


def _lower_lr(now: Current, factor: float = 1 / 3) -> dict[str, Any]:
    """``lr`` (and ``backbone_lr`` when it is set) times ``factor``."""
    return {**now.change("lr", scaled(factor)), **now.change("backbone_lr", scaled(factor))}


def _loss_checks(history: pd.DataFrame, cfg: DiagnosisConfig, now: Current, findings: list[Finding]) -> pd.DataFrame:
    """Non-finite losses, divergence and the generalisation gap; the rows with a finite training loss."""
    last = int(history["epoch"].iloc[-1])
    for column in ("train_loss", "val_loss"):
        if column in history.columns:
            bad = history[~np.isfinite(history[column].astype(float))]
            if len(bad):
                findings.append(Finding(
                    "non_finite", "alert", f"{column} is not finite from epoch {int(bad['epoch'].iloc[0])}",
                    "lower lr (e.g. by 3x), keep grad_clip at 1.0, and check the data of that epoch",
                    {"column": column, "epochs": bad["epoch"].astype(int).tolist()},
                    [Action("lower lr 3x and clip gradients at 1.0",
                            {**_lower_lr(now), **({"grad_clip": 1.0} if now.target and now("grad_clip") is None
                                                  else {})})]))
    finite = history[np.isfinite(history.get("train_loss", pd.Series(0.0, index=history.index)).astype(float))]

    if "train_loss" in finite.columns and len(finite) >= 3:
        train = finite["train_loss"].astype(float).to_numpy()
        low = int(np.argmin(train[:-1]))
        if train[-1] > cfg.divergence_factor * train[low] and low < len(train) - 1:
            findings.append(Finding(
                "divergence", "alert",
                f"training loss rose from {train[low]:.4g} (epoch {int(finite['epoch'].iloc[low])}) to "
                f"{train[-1]:.4g} (epoch {last}), more than {cfg.divergence_factor}x its best",
                "lower lr (e.g. by 3x) and lengthen warmup_epochs; keep grad_clip at 1.0",
                {"best_epoch": int(finite["epoch"].iloc[low]), "best_train_loss": rounded(train[low]),
                 "last_epoch": last, "last_train_loss": rounded(train[-1])},
                [Action("lower lr 3x with a longer warmup",
                        {**_lower_lr(now), **now.change("warmup_epochs", lambda w: 1.0 if w < 0.5 else 2 * w)})]))

    if {"train_loss", "val_loss"} <= set(history.columns):
        train_last, val_last = float(history["train_loss"].iloc[-1]), float(history["val_loss"].iloc[-1])
        if train_last > 0 and math.isfinite(train_last) and math.isfinite(val_last):
            ratio = val_last / train_last
            ratios = (history["val_loss"] / history["train_loss"]).astype(float)
            if ratio >= cfg.gap_warn:
                severity = "alert" if ratio >= cfg.gap_alert else "warning"
                first = int(history["epoch"][ratios >= cfg.gap_warn].iloc[0])
                findings.append(Finding(
                    "generalization_gap", severity,
                    f"validation loss is {ratio:.2f}x the training loss at epoch {last} (above {cfg.gap_warn} "
                    f"since epoch {first}): the model fits the training data better than it generalises",
                    "raise dropout.rate and/or weight_decay, add augmentation, or keep the best checkpoint "
                    "(early_stopping.patience lower)",
                    {"ratio": rounded(ratio), "val_loss": rounded(val_last), "train_loss": rounded(train_last),
                     "first_epoch_above_warn": first, "warn": cfg.gap_warn, "alert": cfg.gap_alert},
                    regularise_actions(now)))
    return finite


def _metric_checks(history: pd.DataFrame, cfg: DiagnosisConfig, now: Current, findings: list[Finding]) -> None:
    """Plateau or still improving, and oscillation, of the monitored metric."""
    epochs, last, lr_col = history["epoch"].astype(int), int(history["epoch"].iloc[-1]), _lr_column(history)
    values = history[cfg.monitor].astype(float)
    best_epoch, best_value = _best_epoch(values, epochs, cfg.mode, cfg.min_delta)
    since = last - best_epoch
    if since >= cfg.plateau_epochs:
        evidence = {"best_epoch": best_epoch, "best_value": rounded(best_value), "epochs_without_improvement": since,
                    "min_delta": cfg.min_delta}
        advice = "lower lr or lengthen warmup_epochs: progress stopped while the learning rate was still high"
        actions = [Action("lower lr 3x and lengthen the warmup",
                          {**_lower_lr(now), **now.change("warmup_epochs", lambda w: 1.0 if w < 0.5 else 2 * w)})]
        if lr_col is not None:
            lr_at = float(history.loc[epochs == best_epoch, lr_col].iloc[0])
            peak = float(history[lr_col].max())
            evidence.update({"lr_column": lr_col, "lr_at_plateau": rounded(lr_at), "lr_peak": rounded(peak)})
            if peak > 0 and lr_at <= cfg.lr_decayed_fraction * peak:
                advice = (f"the learning rate had decayed to {100 * lr_at / peak:.0f}% of its peak when progress "
                          "stopped: raise eta_min_ratio (or use fewer epochs)")
                actions = [Action("keep the learning rate higher at the end of the schedule",
                                  now.change("eta_min_ratio", lambda r: min(max(0.1, 5 * r), 1.0)))]
        message = (f"{cfg.monitor} has not improved by more than {cfg.min_delta} since epoch {best_epoch} "
                   f"({since} epochs)")
        if any(f.kind == "collapse" for f in findings):
            message += (" — the predictions have collapsed (see collapse): fix that first, a learning-rate change "
                        "alone does not")
        findings.append(Finding("plateau", "warning", message, advice, evidence, actions))
    elif best_epoch == last and len(history) >= 3:
        findings.append(Finding(
            "still_improving", "info", f"{cfg.monitor} was still improving at the last epoch ({last})",
            "train longer (more epochs) — this stage had not converged",
            {"last_value": rounded(float(values.iloc[-1])), "first_value": rounded(float(values.iloc[0]))},
            [Action("twice the epochs", now.change("epochs", scaled(2)))]))

    diffs = values.diff().dropna().to_numpy()
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) >= 4:
        significant = np.abs(diffs) > cfg.min_delta
        flips = np.sum((np.sign(diffs[1:]) != np.sign(diffs[:-1])) & significant[1:] & significant[:-1])
        ratio = flips / (len(diffs) - 1)
        if ratio >= cfg.oscillation_ratio:
            mean_change = float(np.mean(np.abs(diffs)))
            findings.append(Finding(
                "oscillation", "warning",
                f"{cfg.monitor} changes direction in {flips} of {len(diffs) - 1} successive epochs "
                f"(mean |change| {mean_change:.4g})",
                "lower lr, raise the batch size (or accumulate_grad_batches), and raise "
                "early_stopping.min_delta so noise does not reset patience",
                {"direction_changes": int(flips), "comparisons": int(len(diffs) - 1),
                 "mean_abs_change": rounded(mean_change)},
                [Action("halve lr and average twice as many samples per step",
                        {**_lower_lr(now, 0.5), **now.change("accumulate_grad_batches", scaled(2))}),
                 Action("count only changes larger than the noise as progress",
                        now.change("early_stopping.min_delta", lambda d: max(d, float(f"{mean_change:.2g}"))))]))


def _dropout_check(history: pd.DataFrame, steps: pd.DataFrame | None, cfg: DiagnosisConfig, now: Current
                   ) -> Finding | None:
    """Progressive dropout: validation volatility before and after the switch."""
    switch_step, switch_epoch = _dropout_switch(history, steps)
    if switch_epoch is None or cfg.monitor not in history.columns:
        return None
    epochs = history["epoch"].astype(int)
    changes = history[cfg.monitor].astype(float).diff()
    before = changes[(epochs < switch_epoch)].dropna()
    after = changes[(epochs > switch_epoch)].dropna()
    evidence = {"switch_step": switch_step, "switch_epoch": switch_epoch,
                "volatility_before": rounded(float(before.std())) if len(before) >= 2 else None,
                "volatility_after": rounded(float(after.std())) if len(after) >= 2 else None}
    actions: list[Action] = []
    if evidence["volatility_before"] is not None and evidence["volatility_after"] is not None:
        calmer = evidence["volatility_after"] < evidence["volatility_before"]
        message = (f"{cfg.monitor} volatility (std of epoch-to-epoch changes) was "
                   f"{evidence['volatility_before']} before dropout switched on (step {switch_step}, epoch "
                   f"{switch_epoch}) and {evidence['volatility_after']} after")
        advice = ("dropout steadied validation; keep it" if calmer else
                  "validation became no steadier after the switch: try a lower dropout.rate or a later "
                  "dropout.warmup_step")
        if not calmer:
            actions = [Action("halve the dropout rate", now.change("dropout.rate", scaled(0.5))),
                       Action("switch dropout on later", now.change("dropout.warmup_step", scaled(2)))]
    else:
        message = (f"dropout switched on at step {switch_step} (epoch {switch_epoch}); too few epochs on one "
                   "side to compare volatility")
        advice = "train more epochs on both sides of dropout.warmup_step to judge its effect"
    return Finding("dropout_switch", "info", message, advice, evidence, actions)


def diagnose(history: pd.DataFrame, config: DiagnosisConfig = DiagnosisConfig(), *,
             steps: pd.DataFrame | None = None, stopped_early: bool | None = None,
             target: RerunTarget | None = None) -> dict[str, Any]:
    """Findings on one training history (see the module docstring); JSON-serialisable.

    ``target``: the stage and the settings it ran with; each action then carries the ``kedro run``
    line that applies it (without one, actions are advice only).
    """
    cfg, now = config, Current(target)
    findings: list[Finding] = []
    if history.empty or "epoch" not in history.columns:
        return {"monitor": cfg.monitor, "mode": cfg.mode, "epochs": 0, "findings": [], "healthy": True,
                "config": asdict(cfg), "note": "empty history: nothing to diagnose", "next_command": None}
    history = history.sort_values("epoch").reset_index(drop=True)
    epochs = history["epoch"].astype(int)
    last = int(epochs.iloc[-1])

    found = find_collapse(history, cfg, now)  # degenerate predictions: first, whatever else the curves say
    findings += [found] if found else []
    finite = _loss_checks(history, cfg, now, findings)  # non-finite, divergence, generalisation gap
    for rule in (find_accuracy_gap, find_relax_regularisation, find_loss_imbalance):
        found = rule(history, cfg, now)
        findings += [found] if found else []
    if cfg.monitor in history.columns and len(history) >= 2:
        _metric_checks(history, cfg, now, findings)  # plateau / still improving, oscillation
    found = find_convergence_speed(history, cfg)
    findings += [found] if found else []

    if stopped_early:
        best_epoch = _best_epoch(history[cfg.monitor].astype(float), epochs, cfg.mode, cfg.min_delta)[0] \
            if cfg.monitor in history.columns else None
        findings.append(Finding("early_stopping", "info", f"early stopping ended the stage at epoch {last}",
                                "nothing to change; the best checkpoint is kept", {"best_epoch": best_epoch,
                                                                                   "last_epoch": last}))

    if "train_loss" in finite.columns and len(finite) >= 3:
        train = finite["train_loss"].astype(float).to_numpy()
        if train[0] > 0 and train[-1] / train[0] > 0.9 and not any(f.kind == "divergence" for f in findings):
            findings.append(Finding(
                "underfitting", "warning",
                f"the training loss fell only from {train[0]:.4g} to {train[-1]:.4g} over {len(train)} epochs",
                "raise lr, unfreeze the backbone (freeze_backbone: false), or increase capacity "
                "(a larger backbone or decoder_channels)",
                {"first_train_loss": rounded(train[0]), "last_train_loss": rounded(train[-1])},
                [Action("raise lr 3x", {**now.change("lr", scaled(3)), **now.change("backbone_lr", scaled(3))}),
                 *([Action("train the backbone too", now.set("freeze_backbone", False))]
                   if now("freeze_backbone") in (True, None) else []),
                 Action("a wider decoder (or a larger backbone: model.backbone)",
                        now.change("model.decoder_channels", scaled(2, high=512)))]))

    found = _dropout_check(history, steps, cfg, now)
    findings += [found] if found else []

    findings.sort(key=lambda f: SEVERITY_ORDER[f.severity])  # stable: within a severity, the order above
    rows = [f.to_dict(target) for f in findings]
    commands = [a["command"] for f in rows if f["severity"] != "info" for a in f["actions"] if "command" in a]
    return {
        "monitor": cfg.monitor, "mode": cfg.mode, "epochs": int(len(history)), "last_epoch": last,
        "findings": rows,
        "healthy": not any(f.severity in ("warning", "alert") for f in findings),
        "config": asdict(cfg),
        "rerun": None if target is None else {"pipeline": target.pipeline, "stage": target.stage_key,
                                              "later_stages": list(target.later_stages)},
        "next_command": commands[0] if commands else None,
    }


def render_diagnosis_markdown(diagnosis: dict[str, Any], *, title: str) -> str:
    """The report as Markdown: each finding, its evidence, what to change and the command that changes it."""
    lines = [f"# Training-curve diagnosis: {title}", "",
             f"Monitored: `{diagnosis['monitor']}` ({diagnosis['mode']}), {diagnosis['epochs']} epoch(s). "
             + ("No warning." if diagnosis["healthy"] else "Warnings below."), ""]
    if diagnosis.get("next_command"):
        lines += ["**Run next** (the first recommendation of the most severe finding):", "", "```bash",
                  diagnosis["next_command"], "```", ""]
    rerun = diagnosis.get("rerun")
    if rerun is None and diagnosis["findings"]:
        lines += ["_No commands: the stage this history belongs to is unknown (set `diagnosis.stage`)._", ""]
    elif rerun and rerun.get("later_stages") and diagnosis.get("next_command"):
        lines += [f"A later stage that starts from {rerun['stage']}'s best checkpoint (`init_from: {rerun['stage']}`, "
                  "directly or through another) must be retrained after it: "
                  + "; ".join(f"`kedro run --pipeline={s} --params {s}.resume=false`" for s in rerun["later_stages"])
                  + ".", ""]
    if not diagnosis["findings"]:
        lines.append("No finding: the curves look clean.")
    for finding in diagnosis["findings"]:
        lines += [f"## {finding['severity'].upper()}: {finding['kind']}", "", finding["message"] + ".", "",
                  "Evidence: " + ", ".join(f"{k} = {v}" for k, v in finding["evidence"].items()), "",
                  f"**What to change:** {finding['recommendation']}.", ""]
        for action in finding.get("actions", []):
            if "command" in action:
                lines += [f"- {action['advice']}:", "", "  ```bash", f"  {action['command']}", "  ```", ""]
            else:
                lines += [f"- {action['advice']}.", ""]
    return "\n".join(lines) + "\n"
