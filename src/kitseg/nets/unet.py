"""Plain U-Net (Ronneberger et al. 2015; 3D: Cicek et al. 2016), 2D or 3D, with optional deep supervision.

The baselines ``unet2d`` and ``unet3d`` are this class with its defaults; ``unet3d_zhang`` and
``tunet_lnet`` configure it as their papers describe. Each level is two conv-norm-act units;
max pooling with per-axis kernels from the pooling plan (``kitseg.nets.plan``) goes down,
transposed convolutions (kernel = stride) come back up, and skips are concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kitseg.nets.blocks import (
    DeepSupervisionHead,
    DoubleConv,
    conv,
    cumulative_scales,
    deep_supervision_outputs,
    max_pool,
    up_conv,
)
from kitseg.nets.plan import as_pool_counts, pool_kernels, size_divisor


class UNet(nn.Module):
    """A U-Net with ``max(pool_counts) + 1`` levels.

    Parameters: ``dims`` 2 or 3; ``base_features`` features at the first level, doubled per level
    up to ``max_features``; ``pool_counts`` the number of 2x poolings per axis (an int for all
    axes), e.g. ``pool_plan(patch)``, applied in ``pool_order`` (see ``plan.pool_kernels``);
    ``norm``/``act`` of the conv units; ``deep_supervision`` adds a 1x1-conv head at every decoder
    level but the finest (whose head is the main output); ``ds_upsample`` brings those heads to
    full size (else they stay at their own scale; ``net.ds_scales`` lists each output's
    downsampling factor). In training mode with deep supervision ``forward`` returns
    ``[full, 1/2, 1/4, ...]`` (finest first); otherwise the full-size logits.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, base_features: int = 32,
                 pool_counts: int | Sequence[int] = 4, max_features: int = 320, norm: str = "instance",
                 act: str = "leakyrelu", deep_supervision: bool = False, ds_upsample: bool = False,
                 first_kernel: int | Sequence[int] = 3, pool_order: str = "early"):
        super().__init__()
        self.dims = dims
        counts = as_pool_counts(pool_counts, dims)
        kernels = pool_kernels(counts, pool_order)
        self.size_divisor = size_divisor(counts)
        feats = [min(base_features * 2**i, max_features) for i in range(len(kernels) + 1)]
        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        prev = in_channels
        for i, f in enumerate(feats):
            self.encoders.append(DoubleConv(dims, prev, f, 3, 1, norm, act, first_kernel if i == 0 else None))
            prev = f
        for k in kernels:
            self.pools.append(max_pool(dims, k))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(len(kernels))):
            self.ups.append(up_conv(dims, feats[i + 1], feats[i], kernels[i]))
            self.decoders.append(DoubleConv(dims, 2 * feats[i], feats[i], 3, 1, norm, act))
        self.head = conv(dims, feats[0], out_channels, 1)
        self.deep_supervision = bool(deep_supervision)
        scales = cumulative_scales(kernels)  # scales[i]: factor at level i
        # decoder outputs, coarsest first, are at levels len(kernels)-1 ... 0; aux heads at levels >= 1
        self.ds_heads = nn.ModuleList()
        self.ds_scales: list[tuple[int, ...]] = [scales[0] if scales else (1,) * dims]
        if self.deep_supervision:
            for lvl in range(1, len(kernels)):
                up = scales[lvl] if ds_upsample else 1
                self.ds_heads.append(DeepSupervisionHead(dims, feats[lvl], out_channels, up))
                self.ds_scales.append((1,) * dims if ds_upsample else scales[lvl])

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < len(self.pools):
                skips.append(x)
                x = self.pools[i](x)
        decoded = []
        for up, dec in zip(self.ups, self.decoders):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
            decoded.append(x)
        return deep_supervision_outputs(self, self.head(x), decoded)


def unet2d(in_channels: int, out_channels: int, base_features: int = 32, n_levels: int = 5,
           max_features: int = 512, norm: str = "batch", act: str = "relu",
           deep_supervision: bool = False, context_slices: int = 1) -> UNet:
    """Plain 2D U-Net baseline (Ronneberger et al. 2015): ``n_levels`` levels (4 poolings for 5).

    ``context_slices`` > 1 makes it 2.5D: that many adjacent slices are stacked as channels, slice-major
    (channel ``s * in_channels + c``, as ``kitseg.nets.vnet25d_ms``), and it predicts the centre slice."""
    if context_slices < 1 or context_slices % 2 == 0:
        raise ValueError(f"context_slices must be odd and >= 1, got {context_slices}")
    net = UNet(2, in_channels * context_slices, out_channels, base_features, n_levels - 1, max_features, norm, act,
               deep_supervision)
    net.context_slices = int(context_slices)
    return net


def unet3d(in_channels: int, out_channels: int, base_features: int = 32, pool_counts: int | Sequence[int] = 4,
           max_features: int = 320, norm: str = "instance", act: str = "leakyrelu",
           deep_supervision: bool = False) -> UNet:
    """Plain 3D U-Net baseline (Cicek et al. 2016) with instance norm and leaky ReLU as in nnU-Net."""
    return UNet(3, in_channels, out_channels, base_features, pool_counts, max_features, norm, act, deep_supervision)
