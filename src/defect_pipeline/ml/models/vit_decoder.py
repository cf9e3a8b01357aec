"""The ``sfp`` decoder's building blocks for single-stride ViT backbones: :class:`ViTFeatureEncoder`
(a timm ``features_only`` ViT with the smp encoder interface) and :class:`SimpleFeaturePyramidDecoder`
(a small ViTDet-style simple feature pyramid fused top-down FPN style). It works for any patch size
(DINOv2's 14 included, where smp's DPT cannot resample; DINOv3's 16 at steps of 16, not DPT's 32) at any
multiple of the patch size; the
hierarchical backbones and DPT are covered by segmentation-models-pytorch instead.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class ViTFeatureEncoder(nn.Module):
    """Wraps a timm ``features_only`` ViT (``FeatureGetterNet``) as an encoder with ``.model``.

    ``forward`` returns one NCHW map per selected block, all at ``1 / patch_size``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.out_channels: list[int] = list(model.feature_info.channels())

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.model(x))


def _groups(channels: int) -> int:
    return math.gcd(32, channels)


class _ConvNormAct(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.ReLU(inplace=True),
        )


def _resampler(channels: int, scale: float) -> nn.Module:
    if scale == 4:
        return nn.Sequential(
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
            nn.GroupNorm(_groups(channels), channels),
            nn.GELU(),
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
        )
    if scale == 2:
        return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
    if scale == 1:
        return nn.Identity()
    if scale == 0.5:
        return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
    raise ValueError(f"unsupported pyramid scale {scale}")


class SimpleFeaturePyramidDecoder(nn.Module):
    """ViTDet-style simple feature pyramid + FPN-like fusion for single-stride (ViT) features.

    Four ViT block outputs (shallow to deep, all at ``1/p``) are projected to ``channels``,
    resampled to ``4x``, ``2x``, ``1x`` and ``0.5x`` of the patch grid, fused top-down (sizes
    matched exactly, so any grid size works, odd ones included), refined per level, upsampled to
    the finest level and summed; spatial dropout follows. Output: ``(B, channels, 4g, 4g)``.
    """

    SCALES = (4.0, 2.0, 1.0, 0.5)

    def __init__(self, in_channels: Sequence[int], channels: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        if len(in_channels) != len(self.SCALES):
            raise ValueError(
                f"SimpleFeaturePyramidDecoder needs {len(self.SCALES)} feature maps, got {len(in_channels)}"
            )
        self.lateral = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(cin, channels, kernel_size=1),
                _resampler(channels, scale),
                _ConvNormAct(channels, channels),
            )
            for cin, scale in zip(in_channels, self.SCALES)
        )
        self.smooth = nn.ModuleList(_ConvNormAct(channels, channels) for _ in self.SCALES)
        self.dropout = nn.Dropout2d(p=dropout)
        self.out_channels = channels

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        laterals = [block(f) for block, f in zip(self.lateral, features)]  # finest first
        top = laterals[-1]
        fused = [top]
        for lateral in reversed(laterals[:-1]):
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            fused.append(top)
        fused.reverse()  # finest first
        size = fused[0].shape[-2:]
        out = self.smooth[0](fused[0])
        for smooth, level in zip(self.smooth[1:], fused[1:]):
            out = out + F.interpolate(smooth(level), size=size, mode="bilinear", align_corners=False)
        return self.dropout(out)
