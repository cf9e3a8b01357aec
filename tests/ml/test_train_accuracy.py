"""Training accuracy per epoch (``train_accuracy``): image-level accuracy over the batches trained on.

The classification head is replaced by one whose answer is known (an oracle that reads the
square's colour, or a constant), so the expected accuracy is exact. Before this change the
history had no ``train_accuracy`` column (a KeyError here), so "train >> val accuracy" could not
be diagnosed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from defect_pipeline.ml.checkpoint import safe_torch_load
from tests.ml.test_engine import LABELS, Out, TinyNet, config, run


class KnownAnswers(TinyNet):
    """TinyNet whose class logits are fixed by ``answer`` (the trained head only keeps the graph alive)."""

    def __init__(self, answer: str) -> None:
        super().__init__()
        self.answer = answer

    def forward(self, x: torch.Tensor) -> Out:
        out = super().forward(x)
        if self.answer == "oracle":  # class 1/2: a bright square in channel 0/1; class 0 (good): none
            bright = x[:, :2].amax(dim=(2, 3)) > 0.7
            label = torch.where(bright[:, 0], 1, torch.where(bright[:, 1], 2, 0))
        else:
            label = torch.zeros(len(x), dtype=torch.long, device=x.device)
        fixed = 20.0 * torch.nn.functional.one_hot(label, LABELS.num_image_classes).float()
        return Out(out.seg_logits, fixed + 0.0 * out.cls_logits)


@pytest.mark.parametrize(("answer", "expected"), [("oracle", 1.0), ("constant", 1 / 3)])
def test_train_accuracy_is_the_share_of_training_images_classified_right(tmp_path: Path, answer: str,
                                                                         expected: float) -> None:
    _, result = run(tmp_path, config(epochs=2, dropout_rate=0.0), model=KnownAnswers(answer))
    # 24 training images, 8 of each class: the oracle gets all right, the constant one class in three
    assert [row["train_accuracy"] for row in result.history] == pytest.approx([expected, expected])
    assert safe_torch_load(tmp_path / "last.pt")["history"][-1]["train_accuracy"] == pytest.approx(expected)
