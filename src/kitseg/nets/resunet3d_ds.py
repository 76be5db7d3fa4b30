"""3D ResUNet with deep supervision: the kidney network of the 3D ResUNet + 2.5D VNet paper (section 2.1).

Paper text, section 2.1: "our network consists of a 4-layer encoder and a 4-layer decoder"; "the
residual module that input[s] the output of the previous layer to the next layer in both the
encoder and decoder after the necessary sampling of the output"; "one map layer following each
decoder layer ... the map layer transforms each output of the decoder to the output of the target
shape"; "our network outputs a total of 4 target-matrix" and the loss is mu (L1 + L2 + L3) + L4
(mu = 0.33, times 0.8 every 15 epochs: the recipe's deep-supervision weights). Input: 64
consecutive slices of 256x256 at 2 mm slice thickness (sections 2.2-2.3).

Our reading and choices where the text is silent:
- Four resolution levels (three 2x2x2 downsamplings, ``pool_counts=3``); base 16 features,
  doubling; ``min(i + 1, 3)`` 3x3x3 conv + instance norm + PReLU units at level i (as in V-Net).
- Residual: each layer adds its (resampled) input to its output: downsampling by a strided conv
  (kernel = stride) before an encoder layer, a transposed conv before a decoder layer; a 1x1 conv
  projects the network input to the first layer's width.
- Decoder layer 4 works at the bottom resolution on the encoder's output; layers 3..1 upsample,
  concatenate the encoder skip, and add the upsampled tensor as their residual.
- Map layer: 1x1 conv to the classes, then trilinear upsampling to the input size (the "target
  shape"). Training returns [map at full res (L4), 1/2, 1/4, 1/8 level (L1..L3)], all full size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kitseg.nets.blocks import (
    ConvNormAct,
    DeepSupervisionHead,
    conv,
    cumulative_scales,
    deep_supervision_outputs,
    up_conv,
)
from kitseg.nets.plan import as_pool_counts, pool_kernels, size_divisor


class ResidualStage(nn.Module):
    """``n_convs`` conv-norm-act units; the stage input (projected if needed) is added to their output."""

    def __init__(self, in_ch: int, out_ch: int, n_convs: int, residual_ch: int, norm: str, act: str):
        super().__init__()
        self.body = nn.Sequential(*(ConvNormAct(3, in_ch if j == 0 else out_ch, out_ch, 3, 1, 1, norm, act)
                                    for j in range(n_convs)))
        self.proj = conv(3, residual_ch, out_ch, 1) if residual_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.proj(residual)


class ResUNet3DDS(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, base_features: int = 16,
                 pool_counts: int | Sequence[int] = 3, max_features: int = 320, norm: str = "instance",
                 act: str = "prelu", deep_supervision: bool = True):
        super().__init__()
        self.dims = 3
        counts = as_pool_counts(pool_counts, 3)
        kernels = pool_kernels(counts)
        self.size_divisor = size_divisor(counts)
        n = len(kernels) + 1
        feats = [min(base_features * 2**i, max_features) for i in range(n)]
        n_convs = [min(i + 1, 3) for i in range(n)]
        self.downs = nn.ModuleList(conv(3, feats[i], feats[i + 1], k, stride=k) for i, k in enumerate(kernels))
        self.encoders = nn.ModuleList(
            ResidualStage(in_channels if i == 0 else feats[i], feats[i], n_convs[i],
                          in_channels if i == 0 else feats[i], norm, act) for i in range(n))
        self.bottom_decoder = ResidualStage(feats[-1], feats[-1], n_convs[-1], feats[-1], norm, act)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(n - 1)):
            self.ups.append(up_conv(3, feats[i + 1], feats[i], kernels[i]))
            self.decoders.append(ResidualStage(2 * feats[i], feats[i], n_convs[i], feats[i], norm, act))
        self.deep_supervision = bool(deep_supervision)
        scales = cumulative_scales(kernels) if kernels else [(1, 1, 1)]
        self.head = conv(3, feats[0], out_channels, 1)
        self.ds_heads = nn.ModuleList()
        self.ds_scales: list[tuple[int, ...]] = [(1, 1, 1)]
        if self.deep_supervision:
            for lvl in range(1, n):
                self.ds_heads.append(DeepSupervisionHead(3, feats[lvl], out_channels, scales[lvl], "linear"))
                self.ds_scales.append((1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.encoders[0](x, x)
        skips = [x]
        for down, enc in zip(self.downs, self.encoders[1:]):
            d = down(x)
            x = enc(d, d)
            skips.append(x)
        skips.pop()
        x = self.bottom_decoder(x, x)
        decoded = [x]
        for up, dec in zip(self.ups, self.decoders):
            u = up(x)
            x = dec(torch.cat([skips.pop(), u], dim=1), u)
            decoded.append(x)
        return deep_supervision_outputs(self, self.head(x), decoded)


def resunet3d_ds(in_channels: int, out_channels: int, base_features: int = 16, pool_counts: int | Sequence[int] = 3,
                 max_features: int = 320, norm: str = "instance", act: str = "prelu",
                 deep_supervision: bool = True) -> ResUNet3DDS:
    """Kidney network of the 3D ResUNet + 2.5D VNet paper (section 2.1): 4 levels, 4 full-size outputs."""
    return ResUNet3DDS(in_channels, out_channels, base_features, pool_counts, max_features, norm, act,
                       deep_supervision)
