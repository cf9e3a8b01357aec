"""Training-curve figure from a stage's history (loss, monitored metric, LR, dropout)."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure


def plot_training_curves(history: pd.DataFrame, *, monitor: str, title: str = "") -> Figure:
    """Four panels: train/val loss, validation metrics, learning rates, dropout and loss weights.

    The x axis is the epoch; when several rows share one (``val_every_n_steps``: a row per
    validation) it is the optimizer step (``global_step``)."""
    # a bare Figure (no pyplot): no global backend switch, nothing left open in pyplot's registry
    fig = Figure(figsize=(11, 7), constrained_layout=True)
    axes = fig.subplots(2, 2)
    by_step = history["epoch"].duplicated().any() and "global_step" in history
    epochs = history["global_step"] if by_step else history["epoch"]
    ax = axes[0, 0]
    for column in ("train_loss", "val_loss"):
        if column in history:
            ax.plot(epochs, history[column], marker="o", label=column)
    ax.set_title("loss")
    ax = axes[0, 1]
    for column in (monitor, "val_macro_f1", "val_miou", "val_miou_defects", "val_accuracy"):
        if column in history and column not in [line.get_label() for line in ax.lines]:
            ax.plot(epochs, history[column], marker="o", label=column)
    ax.set_title("validation metrics")
    ax = axes[1, 0]
    for column in [c for c in history.columns if c.startswith("lr_")]:
        ax.plot(epochs, history[column], marker=".", label=column)
    ax.set_yscale("log")
    ax.set_title("learning rate (at each validation)" if by_step else "learning rate (end of epoch)")
    ax = axes[1, 1]
    for column in ["dropout", *[c for c in history.columns if c.startswith("loss_weight_")]]:
        if column in history:
            ax.plot(epochs, history[column], marker=".", label=column)
    ax.set_title("dropout and loss weights")
    for ax in axes.flat:
        ax.set_xlabel("optimizer step" if by_step else "epoch")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig
