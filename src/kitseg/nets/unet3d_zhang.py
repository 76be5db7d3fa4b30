"""Zhang et al. (KiTS19, 4th place), stage 1: the kidney-localization 3D U-Net (section 2.1).

Paper text, section 2.1: input patch 80x160x160; "the encoding path containing five layers. Each
layer contains two 3x3x3 convolutions each followed by instance normalization and leaky ReLU";
"a 1x2x2 or 2x2x2 max pooling with strides of two"; "at the layer with the highest resolution, 30
feature maps is used and doubles by the layers"; pooling per axis (4, 5, 5) "until each axis of
the feature map is smaller than 8"; a symmetric decoder of 3x3x3 conv + norm + leaky ReLU with
skip connections; "the up-sampling is achieved by transposed convolution".

Our reading: five pooled encoder levels plus the bottleneck (six resolutions: 80x160x160 down to
5x5x5), two conv units per decoder level (the "symmetric counterpart"), skips concatenated as in
3D U-Net. Not in the text, our choice: features are capped at 320 (``max_features``), nnU-Net's
3D cap, because the paper follows nnU-Net (section 2.3) and its base of 30 and (4, 5, 5) plan are
nnU-Net's; ``max_features=None`` gives the uncapped doubling (960 at the bottleneck).
"""

from __future__ import annotations

from collections.abc import Sequence

from kitseg.nets.unet import UNet


def unet3d_zhang(in_channels: int, out_channels: int, base_features: int = 30,
                 pool_counts: int | Sequence[int] = (4, 5, 5), max_features: int | None = 320,
                 deep_supervision: bool = False) -> UNet:
    """Stage-1 localization U-Net; ``pool_counts`` = ``pool_plan(patch_size)`` ((4, 5, 5) for 80x160x160)."""
    cap = max_features if max_features is not None else 2**31
    return UNet(3, in_channels, out_channels, base_features, pool_counts, cap, norm="instance", act="leakyrelu",
                deep_supervision=deep_supervision, ds_upsample=False, pool_order="early")
