"""Residual-encoder 3D U-Net: the nnU-Net-like single-stage baseline.

Modelled on the facts of nnU-Net's residual-encoder presets (Isensee et al. 2024, "nnU-Net
revisited"; its "M" preset for KiTS23): residual encoder stages with (1, 3, 4, 6, 6, 6) basic
residual blocks, the first block of each stage downsampling with a strided convolution; features
32 doubling up to 320; instance norm + leaky ReLU; a light decoder (transposed conv, concatenated
skip, one conv-norm-act unit per stage); deep supervision with a 1x1 head at every decoder stage
kept at its own scale (``net.ds_scales``: the loss downsamples the target, as nnU-Net does).
Paper-size patch 128x128x128 -> ``pool_plan`` (5, 5, 5). This is a baseline, not a paper network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kitseg.nets.blocks import ConvNormAct, ResBlock, conv, cumulative_scales, deep_supervision_outputs, up_conv
from kitseg.nets.plan import as_pool_counts, pool_kernels, size_divisor


class ResEncUNet3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, base_features: int = 32,
                 pool_counts: int | Sequence[int] = (5, 5, 5),
                 blocks_per_stage: int | Sequence[int] = (1, 3, 4, 6, 6, 6), max_features: int = 320,
                 pool_order: str = "early", norm: str = "instance", act: str = "leakyrelu",
                 deep_supervision: bool = True):
        super().__init__()
        self.dims = 3
        counts = as_pool_counts(pool_counts, 3)
        kernels = pool_kernels(counts, pool_order)
        self.size_divisor = size_divisor(counts)
        n = len(kernels) + 1
        if isinstance(blocks_per_stage, int):
            blocks = [int(blocks_per_stage)] * n
        else:
            blocks = [int(b) for b in blocks_per_stage]
        if len(blocks) != n or min(blocks) < 1:
            raise ValueError(f"blocks_per_stage needs {n} entries >= 1 (one per stage), got {blocks_per_stage!r}")
        feats = [min(base_features * 2**i, max_features) for i in range(n)]
        self.stem = ConvNormAct(3, in_channels, feats[0], 3, 1, 1, norm, act)
        self.stages = nn.ModuleList()
        for i in range(n):
            first_in, stride = (feats[0], 1) if i == 0 else (feats[i - 1], kernels[i - 1])
            self.stages.append(nn.Sequential(
                ResBlock(3, first_in, feats[i], 3, stride, norm, act),
                *(ResBlock(3, feats[i], feats[i], 3, 1, norm, act) for _ in range(blocks[i] - 1))))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(n - 1)):
            self.ups.append(up_conv(3, feats[i + 1], feats[i], kernels[i]))
            self.decoders.append(ConvNormAct(3, 2 * feats[i], feats[i], 3, 1, 1, norm, act))
        self.head = conv(3, feats[0], out_channels, 1)
        self.deep_supervision = bool(deep_supervision)
        scales = cumulative_scales(kernels) if kernels else [(1, 1, 1)]
        self.ds_scales: list[tuple[int, ...]] = [scales[0]]
        self.ds_heads = nn.ModuleList()
        if self.deep_supervision:
            for lvl in range(1, n - 1):
                self.ds_heads.append(conv(3, feats[lvl], out_channels, 1))
                self.ds_scales.append(scales[lvl])

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        skips.pop()
        decoded = []
        for up, dec in zip(self.ups, self.decoders):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
            decoded.append(x)
        return deep_supervision_outputs(self, self.head(x), decoded)


def resenc_unet3d(in_channels: int, out_channels: int, base_features: int = 32,
                  pool_counts: int | Sequence[int] = (5, 5, 5),
                  blocks_per_stage: int | Sequence[int] = (1, 3, 4, 6, 6, 6), max_features: int = 320,
                  pool_order: str = "early", deep_supervision: bool = True) -> ResEncUNet3D:
    """nnU-Net-like residual-encoder 3D U-Net (single-stage baseline); DS heads at their own scale."""
    return ResEncUNet3D(in_channels, out_channels, base_features, pool_counts, blocks_per_stage, max_features,
                        pool_order, "instance", "leakyrelu", deep_supervision)
