"""2.5D multi-scale V-Net: the tumor network of the 3D ResUNet + 2.5D VNet paper (section 3.2).

Paper text, section 3.2: "we choose the 2.5D version of VNet" (V-Net: Milletari et al. 2016) on
512x512 slices (section 3.1: masked CT, kidney slices only), with:
- "Multi-scale learning. In the encoder part, each down-sampling operation has an additional
  branch input operation, which is to down-sample the original image to different scales and the
  output image size of each down-sampling operation is the same";
- "a SENet module is added to the down-sampling of each layer to filter the features";
- attention gates (Attention U-Net) on every skip ("short connection"): encoder and decoder
  features make a gate that filters the skip;
- "three layers of HDC at the bottom of encode, dilated rate is 2, 3, 5".

2.5D: ``context_slices`` adjacent slices are stacked as channels; ``in_channels`` is the channel
count of one slice, so the network takes ``context_slices * in_channels`` channels ordered
slice-major (channel ``s * in_channels + c``), and predicts the centre slice (``s =
context_slices // 2``). Not in the text, our choices: 3 context slices; five levels with base 16
features doubling and 1, 2, 3, 3 conv units at levels 0-3 (V-Net), 5x5 kernels and PReLU as in
V-Net, batch norm; down/up-sampling by 2x2 strided / transposed convs (V-Net); each level's stage
adds its input (residual, V-Net); the multi-scale branch is average pooling of the input to the
level's size + a 3x3 conv-norm-act, concatenated with the down-sampled features and fused by a 1x1
conv-norm-act, followed by the SE block; the bottom stage is the HDC block (dilations 2, 3, 5,
3x3 kernels) with a residual; the attention gate's gating signal is the upsampled decoder feature.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Pool
from torch import nn

from kitseg.nets.blocks import AttentionGate, ConvNormAct, HDCBlock, SEBlock, conv, up_conv


class Stage2D(nn.Module):
    """``n_convs`` conv-norm-act units plus the (projected) stage input: V-Net's residual stage."""

    def __init__(self, in_ch: int, out_ch: int, n_convs: int, residual_ch: int, kernel: int, norm: str, act: str):
        super().__init__()
        self.body = nn.Sequential(*(ConvNormAct(2, in_ch if j == 0 else out_ch, out_ch, kernel, 1, 1, norm, act)
                                    for j in range(n_convs)))
        self.proj = conv(2, residual_ch, out_ch, 1) if residual_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.proj(residual)


class VNet25DMS(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, base_features: int = 16, n_levels: int = 5,
                 context_slices: int = 3, kernel: int = 5, norm: str = "batch", act: str = "prelu",
                 se_reduction: int = 4, hdc_dilations: Sequence[int] = (2, 3, 5), attention: bool = True,
                 multi_scale: bool = True, se: bool = True):
        super().__init__()
        if n_levels < 2 or context_slices < 1 or context_slices % 2 == 0:
            raise ValueError(f"need n_levels >= 2 and an odd context_slices >= 1, got {n_levels}, {context_slices}")
        self.dims = 2
        self.deep_supervision = False
        self.context_slices = int(context_slices)
        self.ds_scales: list[tuple[int, ...]] = [(1, 1)]
        self.size_divisor = (2 ** (n_levels - 1),) * 2
        cin = in_channels * context_slices
        self.in_channels_total = cin
        feats = [base_features * 2**i for i in range(n_levels)]
        n_convs = [min(i + 1, 3) for i in range(n_levels)]
        self.multi_scale, self.attention = multi_scale, attention
        self.input_stage = Stage2D(cin, feats[0], n_convs[0], cin, kernel, norm, act)
        self.downs = nn.ModuleList(ConvNormAct(2, feats[i], feats[i + 1], 2, 2, 1, norm, act)
                                   for i in range(n_levels - 1))
        self.branches = nn.ModuleList()
        self.fuses = nn.ModuleList()
        for i in range(1, n_levels):
            if multi_scale:
                self.branches.append(nn.Sequential(Pool[Pool.AVG, 2](kernel_size=2**i, stride=2**i),
                                                   ConvNormAct(2, cin, feats[i], 3, 1, 1, norm, act)))
                self.fuses.append(ConvNormAct(2, 2 * feats[i], feats[i], 1, 1, 1, norm, act))
            else:
                self.branches.append(nn.Identity())
                self.fuses.append(nn.Identity())
        self.ses = nn.ModuleList(SEBlock(2, feats[i], se_reduction) if se else nn.Identity()
                                 for i in range(1, n_levels))
        self.encoders = nn.ModuleList(Stage2D(feats[i], feats[i], n_convs[i], feats[i], kernel, norm, act)
                                      for i in range(1, n_levels - 1))
        self.bottom = HDCBlock(2, feats[-1], hdc_dilations, 3, norm, act)
        self.ups = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(n_levels - 1)):
            self.ups.append(up_conv(2, feats[i + 1], feats[i], 2))
            self.gates.append(AttentionGate(2, feats[i], feats[i], norm=norm) if attention else nn.Identity())
            self.decoders.append(Stage2D(2 * feats[i], feats[i], n_convs[i], feats[i], kernel, norm, act))
        self.head = conv(2, feats[0], out_channels, 1)

    def _down(self, i: int, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        d = self.downs[i](x)
        if self.multi_scale:
            d = self.fuses[i](torch.cat([d, self.branches[i](image)], dim=1))
        return self.ses[i](d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x
        x = self.input_stage(x, x)
        skips = [x]
        for i, enc in enumerate(self.encoders):
            d = self._down(i, x, image)
            x = enc(d, d)
            skips.append(x)
        x = self.bottom(self._down(len(self.encoders), x, image))
        for up, gate, dec in zip(self.ups, self.gates, self.decoders):
            u = up(x)
            skip = skips.pop()
            if self.attention:
                skip = gate(skip, u)
            x = dec(torch.cat([skip, u], dim=1), u)
        return self.head(x)


def vnet25d_ms(in_channels: int, out_channels: int, base_features: int = 16, n_levels: int = 5,
               context_slices: int = 3, kernel: int = 5, norm: str = "batch", act: str = "prelu",
               se_reduction: int = 4, hdc_dilations: Sequence[int] = (2, 3, 5), attention: bool = True,
               multi_scale: bool = True, se: bool = True) -> VNet25DMS:
    """2.5D multi-scale V-Net with SE, attention gates and HDC (section 3.2); input C = context_slices * in_channels."""
    return VNet25DMS(in_channels, out_channels, base_features, n_levels, context_slices, kernel, norm, act,
                     se_reduction, hdc_dilations, attention, multi_scale, se)
