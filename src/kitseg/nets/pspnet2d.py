"""2D PSPNet (Zhao et al. 2017): the 2D baseline the 3D FCN-PPM paper compares with (section III.C).

Facts of PSPNet used here: a dilated ResNet-50 backbone (bottleneck blocks 3, 4, 6, 3; the last
two stages dilated by 2 and 4 instead of strided, output stride 8), a pyramid pooling module with
adaptive average pooling to 1x1, 2x2, 3x3 and 6x6 bins, each followed by a 1x1 conv to C/4
features and bilinear upsampling, concatenated with the features, then a 3x3 conv-norm-ReLU, a 1x1
classifier and bilinear upsampling to the input size. Our simplifications: a single 3x3 stem conv
with max pooling instead of the 7x7/deep stem (max poolings do all downsampling), no auxiliary loss,
trained from scratch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kitseg.nets.blocks import Bottleneck, ConvNormAct, conv, max_pool


class AdaptivePPM(nn.Module):
    """PSPNet's pyramid pooling: adaptive average pooling to each bin count, 1x1 conv, bilinear upsampling."""

    def __init__(self, channels: int, bins: Sequence[int] = (1, 2, 3, 6), norm: str = "batch"):
        super().__init__()
        bc = max(1, channels // len(bins))
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b),
                          ConvNormAct(2, channels, bc, 1, 1, 1, norm if b > 1 else "none", "relu"))
            for b in bins)
        self.out_channels = channels + len(bins) * bc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        return torch.cat([x] + [F.interpolate(b(x), size=size, mode="bilinear", align_corners=False)
                                for b in self.branches], dim=1)


class PSPNet2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, base_features: int = 64,
                 blocks: Sequence[int] = (3, 4, 6, 3), dilations: Sequence[int] = (1, 1, 2, 4), n_pools: int = 3,
                 bins: Sequence[int] = (1, 2, 3, 6), expansion: int = 4, norm: str = "batch"):
        super().__init__()
        if len(blocks) != len(dilations) or n_pools > len(blocks):
            raise ValueError(f"blocks {tuple(blocks)}, dilations {tuple(dilations)} and n_pools {n_pools} disagree")
        self.dims = 2
        self.deep_supervision = False
        self.ds_scales: list[tuple[int, ...]] = [(1, 1)]
        self.size_divisor = (2**n_pools,) * 2
        self.stem = ConvNormAct(2, in_channels, base_features, 3, 1, 1, norm, "relu")
        stages: list[nn.Module] = []
        prev = base_features
        for j, (n, d) in enumerate(zip(blocks, dilations)):
            layers: list[nn.Module] = [max_pool(2, 2)] if j < n_pools else []
            mid = base_features * 2**j
            for b in range(n):
                layers.append(Bottleneck(2, prev if b == 0 else mid * expansion, mid, mid * expansion, d, norm, "relu"))
            prev = mid * expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.ppm = AdaptivePPM(prev, bins, norm)
        self.fuse = ConvNormAct(2, self.ppm.out_channels, max(1, prev // 4), 3, 1, 1, norm, "relu")
        self.classifier = conv(2, max(1, prev // 4), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        y = self.classifier(self.fuse(self.ppm(self.stages(self.stem(x)))))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def pspnet2d(in_channels: int, out_channels: int, base_features: int = 64, blocks: Sequence[int] = (3, 4, 6, 3),
             dilations: Sequence[int] = (1, 1, 2, 4), n_pools: int = 3, bins: Sequence[int] = (1, 2, 3, 6)) -> PSPNet2D:
    """2D PSPNet baseline with a dilated ResNet-50-like backbone (output stride 2 ** n_pools)."""
    return PSPNet2D(in_channels, out_channels, base_features, blocks, dilations, n_pools, bins)
