"""A typed training/validation batch: image, mask and label tensors under their names.

The dataset and data loaders keep yielding dicts (other code reads those); the engine turns
each into a :class:`Batch` so that the loop reads ``batch.image`` rather than ``batch["image"]``
(anomalib's style).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """``image`` (N, 3, H, W) float, ``mask`` (N, H, W) or (N, C, H, W) ground truth, ``label`` (N,) image class."""

    image: Tensor
    mask: Tensor
    label: Tensor

    @classmethod
    def from_dict(cls, batch: Mapping[str, Any]) -> Batch:
        """The ``image``/``mask``/``label`` entries of a collated data-loader batch (other keys are left out)."""
        return cls(image=batch["image"], mask=batch["mask"], label=batch["label"])

    def to(self, device: str | torch.device, *, non_blocking: bool = False, channels_last: bool = False) -> Batch:
        """The same batch on ``device`` (``non_blocking``: an asynchronous copy from pinned memory; ``channels_last``:
        the images in that memory format)."""
        image = self.image.to(device, non_blocking=non_blocking,
                              memory_format=torch.channels_last if channels_last else torch.preserve_format)
        return Batch(image=image, mask=self.mask.to(device, non_blocking=non_blocking),
                     label=self.label.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        """The number of samples."""
        return int(self.image.shape[0])
