"""Validation previews during training: what the model predicts on a fixed handful of validation images.

Every ``stage.preview_every_n_epochs`` epochs and when the stage ends (0 = off),
:class:`PreviewingLogger` — a :class:`~defect_pipeline.ml.engine.TrainingLogger` wrapped around the
one the caller injected — draws a grid with one row per image: the image as the model sees it,
the ground truth and the prediction overlaid (:class:`ValidationPreview`), and hands it to the
inner logger's ``log_figure`` as ``val_preview_epoch<N>.png`` (the pipeline's logger writes it
into the stage's reporting folder, a :class:`FigureFolder`, and into MLflow). The engine is not
involved: the figure is drawn when a validation row is logged, with the model as it is then, and
once more by the stage after training (:meth:`PreviewingLogger.finish`).

The images are chosen once, without randomness (:func:`select_preview_indices`: round robin
over the image classes, in manifest order), so every preview of a stage shows the same ones.
Drawing a preview changes nothing of training: the model runs in eval mode under ``no_grad`` (its
train/eval mode restored afterwards), the samples come from the validation dataset directly (not
its loader), and the Python, NumPy and torch (CPU and CUDA) RNG states are restored afterwards, so
a run with previews draws the same random numbers — and reaches the same metrics — as one without.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from defect_pipeline.ml.augment import IMAGENET_MEAN, IMAGENET_STD
from defect_pipeline.ml.checkpoint import atomic_write, capture_rng_state, restore_rng_state
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.preview import overlay_mask

logger = logging.getLogger(__name__)

MIN_IMAGES, MAX_IMAGES = 4, 8  # one image per image class, within these bounds


@dataclass(frozen=True)
class FigureFolder:
    """A folder that figures are written into while a stage trains (PNG, atomically: temp file + rename)."""

    path: str
    dpi: int = 90

    def save(self, name: str, figure: Figure) -> Path:
        target = Path(self.path) / name
        with atomic_write(target) as tmp:
            figure.savefig(tmp, format="png", dpi=self.dpi)
        return target


def select_preview_indices(targets: Sequence[int], count: int) -> list[int]:
    """``count`` dataset indices (fewer if the dataset is smaller): the first image of each class in class
    order, then the second of each, and so on — every class shown before any is shown twice."""
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(int(target), []).append(index)
    queues = [by_class[c] for c in sorted(by_class)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count and any(depth < len(q) for q in queues):
        chosen += [q[depth] for q in queues if depth < len(q)][:count - len(chosen)]
        depth += 1
    return chosen


def preview_size(num_image_classes: int) -> int:
    """How many images a preview shows: one per image class, at least 4 and at most 8."""
    return max(MIN_IMAGES, min(num_image_classes, MAX_IMAGES))


@contextlib.contextmanager
def rng_untouched() -> Iterator[None]:
    """Whatever runs inside leaves the Python, NumPy and torch (CPU, CUDA) RNG states as it found them."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


class ValidationPreview:
    """Draws ``model``'s predictions on the chosen samples of ``dataset`` (a validation ManifestDataset, its
    transform applied: what the model sees). ``mean``/``std``: the normalisation to undo for display."""

    def __init__(self, model: nn.Module, dataset: Any, labels: LabelSpace, *, seg_mode: str,
                 indices: Sequence[int] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.model, self.dataset, self.labels, self.seg_mode = model, dataset, labels, seg_mode
        self.indices = list(indices) if indices is not None else select_preview_indices(
            dataset.targets, preview_size(labels.num_image_classes))
        self.mean, self.std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)

    def _display(self, image: torch.Tensor) -> np.ndarray:
        array = image.detach().cpu().numpy().transpose(1, 2, 0) * self.std + self.mean
        return (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)

    @torch.no_grad()
    def _predict(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(masks (N, H, W), image classes (N,), their probabilities (N,)) at the input's resolution."""
        device = next(self.model.parameters()).device
        out = self.model(images.to(device))
        seg = out.seg_logits.float()
        if seg.shape[-2:] != images.shape[-2:]:
            seg = F.interpolate(seg, size=images.shape[-2:], mode="bilinear", align_corners=False)
        masks = (seg[:, 0] > 0).long() if self.seg_mode == "binary" else seg.argmax(dim=1)
        probs = out.cls_logits.float().softmax(dim=1)
        confidence, classes = probs.max(dim=1)
        return masks.cpu().numpy(), classes.cpu().numpy(), confidence.cpu().numpy()

    def render(self, title: str) -> Figure:
        """One row per chosen image: image | truth | prediction, under ``title``."""
        was_training = self.model.training
        self.model.eval()
        try:
            with rng_untouched():
                samples = [self.dataset[i] for i in self.indices]
                if samples:
                    masks, classes, confidence = self._predict(torch.stack([s["image"] for s in samples]))
        finally:
            self.model.train(was_training)
        rows = max(len(samples), 1)
        figure = Figure(figsize=(6.6, 2.2 * rows + 0.5), layout="constrained")
        axes = figure.subplots(rows, 3, squeeze=False)
        figure.suptitle(title, fontsize=10)
        names = self.labels.image_classes
        ids = getattr(self.dataset, "sample_ids", None)
        for k, (row, sample, index) in enumerate(zip(axes, samples, self.indices)):
            image = self._display(sample["image"])
            truth = sample["mask"].numpy()
            cells = ((str(ids[index]) if ids is not None else f"sample {index}", image),
                     (f"truth: {names[int(sample['label'])]}", overlay_mask(image, truth)),
                     (f"predicted: {names[int(classes[k])]} ({confidence[k]:.2f})", overlay_mask(image, masks[k])))
            for ax, (text, shown) in zip(row, cells):
                ax.imshow(shown, interpolation="nearest")
                ax.set_title(text, fontsize=8)
                ax.set_axis_off()
        if not samples:
            axes[0][0].text(0.5, 0.5, "no validation images", ha="center")
        else:
            self._legend(figure, [sample["mask"].numpy() for sample in samples] + list(masks))
        return figure

    def _legend(self, figure: Figure, masks: list[np.ndarray]) -> None:
        """Which colour is which segmentation class (those drawn)."""
        from matplotlib.patches import Patch

        from defect_pipeline.ml.preview import class_colour

        names = self.labels.seg_classes if self.seg_mode == "multiclass" else ("background", "defect")
        drawn = sorted({int(c) for mask in masks for c in np.unique(mask) if c > 0})
        if drawn:
            figure.legend(handles=[Patch(facecolor=class_colour(c), label=names[c] if c < len(names) else str(c))
                                   for c in drawn], loc="outside lower center", ncol=min(len(drawn), 6),
                          fontsize=8, frameon=False)


class PreviewingLogger:
    """A :class:`~defect_pipeline.ml.engine.TrainingLogger` that passes everything to ``inner`` and logs
    ``preview``'s figure through ``inner.log_figure``:

    * after the validation that ends epoch ``every_n_epochs``, ``2 × every_n_epochs``, … as
      ``val_preview_epoch<N>.png``; with ``by_step`` (validations every ``val_every_n_steps`` steps,
      several rows per epoch) after the first validation past each of those epochs, as
      ``val_preview_step<S>.png``;
    * once more when the stage ends (:meth:`finish`, called by the stage after training: its last
      epoch, early stopping, a time budget or ``max_steps``), unless that point was just drawn.

    ``weights`` (picklable): where each drawn preview's weights come from — for a stage that validates an
    EMA of its weights, the ``last`` checkpoint just written, loaded into ``preview``'s own copy of the
    network; None: ``preview``'s model as it is. A preview that cannot be drawn or saved is a warning,
    never the end of a training run.
    """

    def __init__(self, inner: Any, preview: ValidationPreview, *, every_n_epochs: int, stage: str = "",
                 by_step: bool = False, weights: Callable[[], dict[str, Any]] | None = None) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1 (0 turns previews off: do not wrap), got {every_n_epochs}")
        self.inner, self.preview, self.every_n_epochs, self.stage, self.by_step = (
            inner, preview, every_n_epochs, stage, by_step)
        self.weights = weights
        self._passed = 0  # by_step: the last multiple of every_n_epochs a preview was drawn after
        self._latest: str | None = None  # the name of the latest preview

    def _name(self, epoch: int, step: int) -> str:
        return f"val_preview_step{step}.png" if self.by_step else f"val_preview_epoch{epoch}.png"

    def due(self, epoch: int) -> bool:
        """Whether the validation row of ``epoch`` gets a preview (updates the ``by_step`` bookkeeping)."""
        if not self.by_step:
            return epoch % self.every_n_epochs == 0
        passed = (epoch - 1) // self.every_n_epochs * self.every_n_epochs  # epochs fully behind this row
        if passed <= self._passed:
            return False
        self._passed = passed
        return True

    def log_steps(self, rows: list[dict[str, Any]]) -> None:
        self.inner.log_steps(rows)

    def log_checkpoint(self, kind: str, path: Path) -> None:
        self.inner.log_checkpoint(kind, path)

    def log_figure(self, name: str, figure: Figure) -> None:
        self.inner.log_figure(name, figure)

    def log_epoch(self, epoch: int, step: int, row: dict[str, float]) -> None:
        self.inner.log_epoch(epoch, step, row)
        if self.due(epoch):
            self._draw(epoch, step)

    def finish(self, *, epoch: int, step: int, weights: Callable[[], dict[str, Any]] | None = None) -> None:
        """The stage ended after ``epoch`` at ``step``: its preview, unless just drawn. ``weights``: where the
        final weights come from when this process's model did not train (several processes)."""
        if self._name(epoch, step) == self._latest:
            return
        try:
            if weights is not None:
                self.preview.model.load_state_dict(weights())
        except Exception as error:  # noqa: BLE001 - a report must not end a training run
            logger.warning("%s: no final validation preview (%s: %s)", self.stage, type(error).__name__, error)
            return
        self._draw(epoch, step)

    def _draw(self, epoch: int, step: int) -> None:
        name = self._name(epoch, step)
        try:
            if self.weights is not None:
                self.preview.model.load_state_dict(self.weights())
            figure = self.preview.render(f"{self.stage or 'training'}: validation predictions, epoch {epoch} "
                                         f"(step {step})")
            self.inner.log_figure(name, figure)
            self._latest = name
        except Exception as error:  # noqa: BLE001 - a report must not end a training run
            logger.warning("%s: the validation preview %s could not be written (%s: %s); training goes on",
                           self.stage, name, type(error).__name__, error)
