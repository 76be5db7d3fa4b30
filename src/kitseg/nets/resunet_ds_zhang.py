"""Zhang et al. (KiTS19, 4th place), stage 2: residual U-Net with deep supervision (section 2.2).

Paper text, section 2.2 (input patch 40x128x128, 2 channels: CT + the stage-1 kidney mask as a
spatial prior, section 2.3):
- encoder of "pre-activation ResNet blocks, where each block consists of two convolutions with the
  instance normalization and ReLU"; "downsize image dimensions by 2 and simultaneously increase
  feature size by 2. For downsizing we employ strided convolutions";
- "all of the convolutions are 3x3x3 except the first convolution with the shape 1x3x3 to balance
  the spacing"; pooling counts per axis (3, 5, 5); "the base number of filters is set to 30";
- decoder: "deconvolution to double the spatial dimension and reduce the number of features,
  followed by an addition of encoder output through the skip connections"; then a pre-activation
  block that "reduce[s] the feature size by 2 in the first convolution and use[s] a 1x1x1
  convolution before residual connection";
- deep supervision: "in each decoder level, we use a convolution and an upsampling to get the same
  spatial size as the original image".

Our reading and choices where the text is silent:
- One residual block per level (``blocks_per_level``); the stem is the 1x3x3 conv, the strided
  downsampling convs are 3x3x3 with stride = the pooling kernel.
- The text's decoder cannot both reduce features in the deconvolution and halve them in every
  block while adding f_i-channel skips, so: the transposed conv maps whatever comes from below to
  the level's f_i features (reducing them), the skip is added, and the block halves f_i -> f_i/2.
- The text gives the pool counts (3, 5, 5), not the steps at which z is pooled. By default
  (``pool_order="late"``) z is pooled at the three deepest steps: at the recipes' 3.22 x 1.62 x
  1.62 mm the first (1, 2, 2) step makes the grid isotropic (3.22 x 3.24 mm), as the 1x3x3 first
  conv "to balance the spacing" suggests. nnU-Net's rule (pool every axis whose spacing is at most
  twice the finest) would pool z from the first step at that ratio of 1.99: ``pool_order="early"``.
- Features capped at 320 (``max_features``) as in nnU-Net, which the paper follows (section 2.3);
  ``max_features=None`` gives the literal doubling (960 at the bottom).
- Aux heads: 1x1 conv then trilinear upsampling to full size (``ds_mode``), one per decoder level
  below the finest; ``forward`` in training returns [full, level 1, level 2, ...], all full size.
Ablations of Table 1 are switches: ``deep_supervision`` (DS), ``residual`` (Res: ``False`` drops
the blocks' shortcuts), SP = ``in_channels=2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kitseg.nets.blocks import (
    DeepSupervisionHead,
    PreActResBlock,
    conv,
    cumulative_scales,
    deep_supervision_outputs,
    up_conv,
)
from kitseg.nets.plan import as_pool_counts, pool_kernels, size_divisor


class ResUNetDS(nn.Module):
    """Pre-activation residual U-Net with strided-conv downsampling, additive skips and deep supervision."""

    def __init__(self, in_channels: int, out_channels: int, base_features: int = 30,
                 pool_counts: int | Sequence[int] = (3, 5, 5), pool_order: str = "late", max_features: int | None = 320,
                 blocks_per_level: int = 1, first_kernel: int | Sequence[int] = (1, 3, 3),
                 deep_supervision: bool = True, residual: bool = True, ds_mode: str = "linear"):
        super().__init__()
        self.dims = 3
        counts = as_pool_counts(pool_counts, 3)
        kernels = pool_kernels(counts, pool_order)
        self.size_divisor = size_divisor(counts)
        cap = max_features if max_features is not None else 2**31
        feats = [min(base_features * 2**i, cap) for i in range(len(kernels) + 1)]

        def blocks(ch: int) -> nn.Sequential:
            return nn.Sequential(*(PreActResBlock(3, ch, ch, residual=residual) for _ in range(blocks_per_level)))

        self.stem = conv(3, in_channels, feats[0], first_kernel)
        self.encoders = nn.ModuleList([blocks(feats[0])])
        self.downs = nn.ModuleList()
        for i, k in enumerate(kernels):
            self.downs.append(conv(3, feats[i], feats[i + 1], 3, stride=k))
            self.encoders.append(blocks(feats[i + 1]))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        below = feats[-1]
        dec_out = []
        for i in reversed(range(len(kernels))):
            half = max(1, feats[i] // 2)
            self.ups.append(up_conv(3, below, feats[i], kernels[i]))
            self.decoders.append(PreActResBlock(3, feats[i], half, residual=residual))
            dec_out.append(half)
            below = half
        self.head = conv(3, below, out_channels, 1)
        self.deep_supervision = bool(deep_supervision)
        self.ds_heads = nn.ModuleList()
        self.ds_scales: list[tuple[int, ...]] = [(1, 1, 1)]
        if self.deep_supervision:
            scales = cumulative_scales(kernels)
            for lvl in range(1, len(kernels)):
                ch = dec_out[len(kernels) - 1 - lvl]
                self.ds_heads.append(DeepSupervisionHead(3, ch, out_channels, scales[lvl], ds_mode))
                self.ds_scales.append((1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.encoders[0](self.stem(x))
        skips = [x]
        for down, enc in zip(self.downs, self.encoders[1:]):
            x = enc(down(x))
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        decoded = []
        for up, dec in zip(self.ups, self.decoders):
            x = dec(up(x) + skips.pop())
            decoded.append(x)
        return deep_supervision_outputs(self, self.head(x), decoded)


def resunet_ds_zhang(in_channels: int, out_channels: int, base_features: int = 30,
                     pool_counts: int | Sequence[int] = (3, 5, 5), pool_order: str = "late",
                     max_features: int | None = 320, blocks_per_level: int = 1, deep_supervision: bool = True,
                     residual: bool = True, ds_mode: str = "linear") -> ResUNetDS:
    """Stage-2 kidney + tumor network of Zhang et al. section 2.2 (paper size: 2 inputs, 3 classes)."""
    return ResUNetDS(in_channels, out_channels, base_features, pool_counts, pool_order, max_features,
                     blocks_per_level, (1, 3, 3), deep_supervision, residual, ds_mode)
