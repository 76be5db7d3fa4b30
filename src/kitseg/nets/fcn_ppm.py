"""3D_FCN_PPM: the 3D fully convolutional network with a pyramid pooling module (section II.A).

Paper text, section II.A.1: "13 residual blocks with a total of 39 convolutional layers"; "we
decrease the number of pooling layers to two"; "we choose to limit the width of network to achieve
a deeper network structure. The dilated convolution and the pyramid pooling module (PPM) are
incorporated in our 3D network for larger reception fields". Section II.A.2: "the PPM includes a
shortcut and four branches, each of which mainly consists of a pooling layer, a convolution layer
and a deconvolution layer"; "the kernel sizes are set to 2, 4, 8 and 16"; "the input of PPM and
the outputs of all branches are concatenated to be fed into the following layer". Inputs: ROIs of
64 slices (section II.B), 150x150 pixels in-plane (section II).

Our reading and choices (Fig. 3 with the layer settings is not available to us). "39
convolutional layers in our network" is read as every convolution of the whole network, not of
the block bodies alone (``block="basic"``, the default):
- 13 basic residual blocks (two 3x3x3 convs each, post-activation, He et al. 2016) laid out
  3 + 4 + 6 as the first three stages of ResNet-34, dilated as PSPNet (the PPM's source) does: a
  3x3x3 stem conv and max pooling, 3 blocks, max pooling, 4 blocks, then 6 blocks with dilation 2
  instead of a third pooling. Widths base x (1, 2, 4), base 32 ("limit the width"); batch norm +
  ReLU. Counted over the whole network: stem 1 + blocks 26 + the two 1x1 projections where the
  width changes 2 + PPM 4 convs and 4 deconvolutions + fusing conv 1 + classifier 1 = 39
  (``conv_layers`` counts them; tests/test_nets.py checks it).
- PPM branches: average pooling (kernel = stride = k), 1x1 conv + ReLU to C/4 features, and a
  deconvolution (kernel = stride = k) back, one kernel per channel (``ppm_upsample="grouped"``,
  FCN's per-channel upsampling deconvolution; the paper is "inspired by the idea of FCN" and limits
  the width). A full C/4 x C/4 deconvolution (``ppm_upsample="full"``) would put C^2/16 x 4096
  weights in the k = 16 branch alone (16.8 M of 21.2 M parameters with the bottleneck layout).
  Concatenated with the shortcut (2C features).
- After the PPM: a 3x3x3 conv-norm-ReLU, a 1x1 classifier and trilinear upsampling by the pooling
  factor (PSPNet's head). Patch 64x128x128 (a 128x128 random crop of the 150x150 ROI: every PPM
  kernel must divide the 1/4-scale size, so inputs must be divisible by 4 x 16 = 64 per axis).
- ``block="bottleneck"``: the other reading, 13 ResNet bottleneck blocks (1x1, 3x3x3, 1x1) as
  ResNet-50's first three stages with 4x expansion (39 convs in the block bodies, 53 in the whole
  network).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from kitseg.nets.blocks import Bottleneck, ConvNormAct, PyramidPooling, ResBlock, conv, max_pool
from kitseg.nets.plan import as_pool_counts, pool_kernels


class FCNPPM(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, base_features: int = 32,
                 blocks: Sequence[int] = (3, 4, 6), dilations: Sequence[int] = (1, 1, 2),
                 pool_counts: int | Sequence[int] = 2, ppm_kernels: Sequence[int] = (2, 4, 8, 16),
                 expansion: int = 4, norm: str = "batch", act: str = "relu", block: str = "basic",
                 ppm_upsample: str = "grouped"):
        super().__init__()
        if len(blocks) != len(dilations):
            raise ValueError(f"blocks {tuple(blocks)} and dilations {tuple(dilations)} need one entry per stage")
        if block not in ("basic", "bottleneck") or ppm_upsample not in ("grouped", "full"):
            raise ValueError(f"block must be 'basic' or 'bottleneck' and ppm_upsample 'grouped' or 'full', "
                             f"got {block!r}, {ppm_upsample!r}")
        self.dims = 3
        self.deep_supervision = False
        self.ds_scales: list[tuple[int, ...]] = [(1, 1, 1)]
        counts = as_pool_counts(pool_counts, 3)
        kernels = pool_kernels(counts)
        if len(kernels) > len(blocks):
            raise ValueError(f"{len(kernels)} poolings need at least as many block stages, got {len(blocks)}")
        factor = tuple(2**c for c in counts)
        lcm = math.lcm(*(int(k) for k in ppm_kernels))
        self.size_divisor = tuple(f * lcm for f in factor)
        self.stem = ConvNormAct(3, in_channels, base_features, 3, 1, 1, norm, act)
        stages: list[nn.Module] = []
        prev = base_features
        for j, (n, d) in enumerate(zip(blocks, dilations)):
            layers: list[nn.Module] = [max_pool(3, kernels[j])] if j < len(kernels) else []
            mid = base_features * 2**j
            for b in range(n):
                if block == "bottleneck":
                    width = prev if b == 0 else mid * expansion
                    layers.append(Bottleneck(3, width, mid, mid * expansion, d, norm, act))
                else:
                    layers.append(ResBlock(3, prev if b == 0 else mid, mid, 3, 1, norm, act, d))
            prev = mid * expansion if block == "bottleneck" else mid
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.ppm = PyramidPooling(3, prev, ppm_kernels, max(1, prev // len(ppm_kernels)), act,
                                  grouped_up=ppm_upsample == "grouped")
        head = base_features * expansion if block == "bottleneck" else base_features * 2
        self.fuse = ConvNormAct(3, self.ppm.out_channels, head, 3, 1, 1, norm, act)
        self.classifier = conv(3, head, out_channels, 1)
        scale = tuple(float(f) for f in factor)
        self.upsample = (nn.Upsample(scale_factor=scale, mode="trilinear", align_corners=False)
                         if any(f > 1 for f in factor) else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.upsample(self.classifier(self.fuse(self.ppm(x))))

    @property
    def residual_blocks(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, (ResBlock, Bottleneck))]

    @property
    def conv_layers(self) -> list[nn.Module]:
        """Every convolution and deconvolution of the whole network (the paper's "39 convolutional layers")."""
        return [m for m in self.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]


def fcn_ppm(in_channels: int, out_channels: int, base_features: int = 32, blocks: Sequence[int] = (3, 4, 6),
            dilations: Sequence[int] = (1, 1, 2), pool_counts: int | Sequence[int] = 2,
            ppm_kernels: Sequence[int] = (2, 4, 8, 16), expansion: int = 4, norm: str = "batch",
            act: str = "relu", block: str = "basic", ppm_upsample: str = "grouped") -> FCNPPM:
    """3D FCN with a pyramid pooling module: 13 residual blocks, 39 convolutions in all, 2 poolings, PPM 2-16."""
    return FCNPPM(in_channels, out_channels, base_features, blocks, dilations, pool_counts, ppm_kernels, expansion,
                  norm, act, block, ppm_upsample)
