"""TuNet (KiTS19): L-Net, W-Net and T-Net, cascaded 3D U-Nets with sigmoid outputs.

Paper text:
- Section 2.1: the L-Net is "a traditional 3D U-Net" on the whole volume downsampled to
  128x128x64, estimating the whole (kidney + tumor) region.
- Section 2.2: W-Net and T-Net have "a similar U-Net architecture"; "in each convolution block in
  the encoding path, the original input image was downsampled and concatenated with the feature
  map of the respective layer. The rate of downsampling was increased according to the dimensions
  of that layer" (an input pyramid). The T-Net input has two channels, "the input image, and the
  probability map of the previous output" (the W-Net's); the W-Net has only the image.
- Section 2.3: "after each convolution and concatenation block, we added a Squeeze-and-Excitation
  block" (the TuNet + SEB variant; ``se=True``).
- Section 3.2: "the activation function of the final layer was the sigmoid function": the networks
  return logits and the loss/inference apply the sigmoid (``NetInfo.activation = "sigmoid"``).

Not in the text (the figures give no widths), our choices: base 16 features doubling per level,
five resolution levels (four 2x2x2 poolings), two 3x3x3 conv + batch norm + ReLU per level as in
the "traditional" 3D U-Net of Cicek et al., transposed-conv upsampling, concatenated skips; the
input pyramid uses average pooling of the (multi-channel) input to each level's size; SE
reduction 4 (``se_reduction``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Pool
from torch import nn

from kitseg.nets.blocks import DoubleConv, SEBlock, conv, cumulative_scales, max_pool, up_conv
from kitseg.nets.plan import as_pool_counts, pool_kernels, size_divisor
from kitseg.nets.unet import UNet


class PyramidUNet(nn.Module):
    """U-Net whose encoder levels also see the input downsampled to their size, with optional SE blocks."""

    def __init__(self, in_channels: int, out_channels: int, base_features: int = 16,
                 pool_counts: int | Sequence[int] = 4, max_features: int = 512, norm: str = "batch", act: str = "relu",
                 se: bool = False, se_reduction: int = 4):
        super().__init__()
        self.dims = 3
        self.deep_supervision = False
        counts = as_pool_counts(pool_counts, 3)
        kernels = pool_kernels(counts)
        self.size_divisor = size_divisor(counts)
        feats = [min(base_features * 2**i, max_features) for i in range(len(kernels) + 1)]

        def maybe_se(ch: int) -> nn.Module:
            return SEBlock(3, ch, se_reduction) if se else nn.Identity()

        self.pools = nn.ModuleList(max_pool(3, k) for k in kernels)
        self.input_pools = nn.ModuleList(
            Pool[Pool.AVG, 3](kernel_size=s, stride=s) for s in cumulative_scales(kernels)[1:])
        self.encoders = nn.ModuleList([DoubleConv(3, in_channels, feats[0], 3, 1, norm, act)])
        self.enc_se = nn.ModuleList([maybe_se(feats[0])])
        for i in range(1, len(feats)):
            self.encoders.append(DoubleConv(3, feats[i - 1] + in_channels, feats[i], 3, 1, norm, act))
            self.enc_se.append(maybe_se(feats[i]))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.dec_se = nn.ModuleList()
        for i in reversed(range(len(kernels))):
            self.ups.append(up_conv(3, feats[i + 1], feats[i], kernels[i]))
            self.decoders.append(DoubleConv(3, 2 * feats[i], feats[i], 3, 1, norm, act))
            self.dec_se.append(maybe_se(feats[i]))
        self.head = conv(3, feats[0], out_channels, 1)
        self.ds_scales: list[tuple[int, ...]] = [(1, 1, 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x
        x = self.enc_se[0](self.encoders[0](x))
        skips = []
        for pool, ipool, enc, se in zip(self.pools, self.input_pools, self.encoders[1:], self.enc_se[1:]):
            skips.append(x)
            x = se(enc(torch.cat([pool(x), ipool(image)], dim=1)))
        for up, dec, se in zip(self.ups, self.decoders, self.dec_se):
            x = se(dec(torch.cat([skips.pop(), up(x)], dim=1)))
        return self.head(x)


def tunet_lnet(in_channels: int, out_channels: int, base_features: int = 16, pool_counts: int | Sequence[int] = 4,
               max_features: int = 512, norm: str = "batch", act: str = "relu") -> UNet:
    """L-Net (TuNet section 2.1): a traditional 3D U-Net on the whole volume at 64x128x128 (z, y, x)."""
    return UNet(3, in_channels, out_channels, base_features, pool_counts, max_features, norm, act)


def tunet_wnet(in_channels: int, out_channels: int, base_features: int = 16, pool_counts: int | Sequence[int] = 4,
               max_features: int = 512, norm: str = "batch", act: str = "relu", se: bool = False,
               se_reduction: int = 4) -> PyramidUNet:
    """W-Net (TuNet section 2.2): input-pyramid 3D U-Net for the whole region; ``se`` adds SE blocks (2.3)."""
    return PyramidUNet(in_channels, out_channels, base_features, pool_counts, max_features, norm, act, se, se_reduction)


def tunet_tnet(in_channels: int, out_channels: int, base_features: int = 16, pool_counts: int | Sequence[int] = 4,
               max_features: int = 512, norm: str = "batch", act: str = "relu", se: bool = False,
               se_reduction: int = 4) -> PyramidUNet:
    """T-Net (TuNet section 2.2): the W-Net architecture on 2 channels, CT + W-Net probability, for the tumor."""
    return PyramidUNet(in_channels, out_channels, base_features, pool_counts, max_features, norm, act, se, se_reduction)
