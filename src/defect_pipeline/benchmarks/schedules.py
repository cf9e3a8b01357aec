"""The learning-rate schedulers of ``stageN.scheduler`` drawn on one example stage (docs/training.md).

``python -m defect_pipeline.benchmarks schedules --out docs/img/schedules.png`` draws each shape
of :data:`~defect_pipeline.ml.schedules.SCHEDULERS` for a 30-epoch stage of 100 optimizer steps
per epoch with a 2-epoch warmup (``warmup_lr_ratio: 0.1``, ``eta_min_ratio: 0.01``), through the
same epoch → step conversion the engine uses (:meth:`EngineConfig.lr_schedule`). Unlike the
other commands here it writes a figure, not a section of docs/benchmarks.md: nothing is measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from defect_pipeline.ml.engine import EngineConfig
from defect_pipeline.ml.schedules import lr_multiplier

EPOCHS, STEPS_PER_EPOCH = 30, 100
COMMON = {"warmup_epochs": 2.0, "warmup_lr_ratio": 0.1, "eta_min_ratio": 0.01}
# title → the stage settings that select the shape (besides COMMON)
EXAMPLES: dict[str, dict[str, Any]] = {
    "cosine (default)": {"scheduler": "cosine"},
    "cosine_restarts: restart_epochs 4, restart_mult 2": {"scheduler": "cosine_restarts", "restart_epochs": 4.0,
                                                          "restart_mult": 2.0},
    "step: step_epochs 8, step_gamma 0.3": {"scheduler": "step", "step_epochs": 8.0, "step_gamma": 0.3},
    "constant": {"scheduler": "constant"},
}


def schedule_curves(epochs: int = EPOCHS, steps_per_epoch: int = STEPS_PER_EPOCH) -> dict[str, list[float]]:
    """Each example's LR multiplier (LR / ``lr``) at every optimizer step ``0 .. epochs * steps_per_epoch``."""
    curves = {}
    for title, settings in EXAMPLES.items():
        config = EngineConfig(epochs=epochs, lr=1.0, backbone_lr=1.0, weight_decay=0.0, **COMMON, **settings)
        shape = config.lr_schedule(steps_per_epoch)
        curves[title] = [lr_multiplier(step, **shape) for step in range(shape["total_steps"] + 1)]
    return curves


def plot_schedules(curves: dict[str, list[float]], *, steps_per_epoch: int = STEPS_PER_EPOCH) -> Figure:
    """One panel per scheduler: LR as a fraction of the stage's ``lr`` over the epochs, the warmup shaded."""
    fig = Figure(figsize=(10, 6), constrained_layout=True)
    axes = fig.subplots(2, 2, sharex=True, sharey=True)
    for ax, (title, values) in zip(axes.flat, curves.items(), strict=True):
        ax.axvspan(0, COMMON["warmup_epochs"], color="0.9", label="warmup")
        ax.plot([step / steps_per_epoch for step in range(len(values))], values, color="C0", label="LR / lr")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("LR / lr")
    axes[0, 0].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"stageN.scheduler: {EPOCHS} epochs x {STEPS_PER_EPOCH} steps, warmup_epochs "
                 f"{COMMON['warmup_epochs']:g}, warmup_lr_ratio {COMMON['warmup_lr_ratio']:g}, eta_min_ratio "
                 f"{COMMON['eta_min_ratio']:g}", fontsize=10)
    return fig


def main(argv: list[str] | None = None) -> None:
    """Write the figure (PNG) to ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m defect_pipeline.benchmarks schedules")
    parser.add_argument("--out", default="docs/img/schedules.png", help="where the PNG goes")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_schedules(schedule_curves()).savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
