"""``python -m defect_pipeline.benchmarks schedules``: the figure docs/training.md shows, drawn from the real schedules."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from defect_pipeline.benchmarks import schedules
from defect_pipeline.ml.schedules import SCHEDULERS


def test_the_figure_draws_every_scheduler_from_the_engine_conversion(tmp_path: Path) -> None:
    curves = schedules.schedule_curves()
    assert [settings["scheduler"] for settings in schedules.EXAMPLES.values()] == list(SCHEDULERS)
    cosine, restarts, step, constant = curves.values()
    assert all(len(values) == 3001 for values in curves.values())
    assert [c[0] for c in curves.values()] == pytest.approx([0.1] * 4)  # warmup_lr_ratio
    assert [c[200] for c in curves.values()] == pytest.approx([1.0] * 4)  # the warmup ends after 2 epochs
    assert cosine[-1] == pytest.approx(0.01) and restarts[-1] == pytest.approx(0.01)  # eta_min_ratio
    assert restarts[600] == restarts[1400] == pytest.approx(1.0)  # cycles of 4, 8, 16 epochs after the warmup
    assert restarts[599] < 0.02
    assert step[999] == pytest.approx(1.0) and step[1000] == pytest.approx(0.3) and step[1800] == pytest.approx(0.09)
    assert set(constant[200:]) == {1.0}
    figure = schedules.plot_schedules(curves)
    assert [ax.get_title() for ax in figure.axes] == list(schedules.EXAMPLES)
    assert list(figure.axes[1].lines[0].get_ydata()) == restarts

    out = tmp_path / "img" / "schedules.png"
    schedules.main(["--out", str(out)])
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (800, 480)
