"""Shared building blocks of the papers' networks, aware of 2D and 3D (``dims`` = 2 or 3).

Layer classes come from MONAI's dimension-aware factories (``Conv``, ``Norm``, ``Act``, ``Pool``);
the blocks themselves follow the papers' text:

- ``ConvNormAct``: conv -> norm -> activation (Zhang et al. section 2.1: "3x3x3 conv + instance
  normalization + leaky ReLU").
- ``PreActResBlock``: pre-activation residual block, norm -> act -> conv twice plus a shortcut
  (Zhang et al. section 2.2, after He et al. 2016 "Identity mappings in deep residual networks").
- ``ResBlock`` (post-activation; nnU-Net ResEnc, the 3D FCN's 13 basic blocks) and ``Bottleneck``
  (1x1, 3x3, 1x1; PSPNet's backbone, the 3D FCN's other reading): residual blocks of He et al. 2016.
- ``SEBlock``: squeeze-and-excitation (Hu et al. 2018; TuNet section 2.3 and the 2.5D VNet).
- ``AttentionGate``: additive attention gate on a skip connection (Oktay et al. 2018; 2.5D VNet).
- ``PyramidPooling``: shortcut plus branches of (avg-pool k, 1x1 conv, transposed conv k), all
  concatenated (3D FCN paper, pyramid pooling module).
- ``HDCBlock``: hybrid dilated convolutions, e.g. dilations (2, 3, 5) (2.5D VNet bottom).
- ``DeepSupervisionHead``: 1x1 conv to the classes, optionally upsampled to full size (Zhang et
  al. section 2.2: "a convolution and an upsampling to get the same spatial size").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Act, Conv, Norm, Pool
from torch import nn

from kitseg.errors import KitsegError

IntOrSeq = int | Sequence[int]

NORMS = {"instance": Norm.INSTANCE, "batch": Norm.BATCH, "none": None}
ACTS = {"leakyrelu": Act.LEAKYRELU, "relu": Act.RELU, "prelu": Act.PRELU, "none": None}


def tup(value: IntOrSeq, dims: int) -> tuple[int, ...]:
    """An int or a per-axis sequence as a ``dims``-tuple."""
    if isinstance(value, int):
        return (value,) * dims
    out = tuple(int(v) for v in value)
    if len(out) != dims:
        raise KitsegError(f"expected {dims} values (one per axis), got {tuple(value)!r}")
    return out


def same_padding(kernel: IntOrSeq, dilation: IntOrSeq, dims: int) -> tuple[int, ...]:
    """Padding that keeps the size for odd kernels at stride 1."""
    return tuple(d * (k - 1) // 2 for k, d in zip(tup(kernel, dims), tup(dilation, dims)))


def conv(dims: int, in_ch: int, out_ch: int, kernel: IntOrSeq = 3, stride: IntOrSeq = 1,
         dilation: IntOrSeq = 1, bias: bool = True) -> nn.Module:
    """A 2D/3D convolution with 'same' padding (for odd kernels)."""
    return Conv[Conv.CONV, dims](in_ch, out_ch, kernel_size=tup(kernel, dims), stride=tup(stride, dims),
                                 padding=same_padding(kernel, dilation, dims), dilation=tup(dilation, dims),
                                 bias=bias)


def up_conv(dims: int, in_ch: int, out_ch: int, scale: IntOrSeq = 2) -> nn.Module:
    """Transposed convolution with kernel = stride = ``scale``: exactly multiplies the size by ``scale``."""
    s = tup(scale, dims)
    return Conv[Conv.CONVTRANS, dims](in_ch, out_ch, kernel_size=s, stride=s)


def max_pool(dims: int, kernel: IntOrSeq = 2) -> nn.Module:
    k = tup(kernel, dims)
    return Pool[Pool.MAX, dims](kernel_size=k, stride=k)


def norm_layer(dims: int, kind: str, channels: int) -> nn.Module:
    if kind not in NORMS:
        raise KitsegError(f"unknown norm {kind!r}; choose one of {sorted(NORMS)}")
    if NORMS[kind] is None:
        return nn.Identity()
    if kind == "instance":
        return Norm[Norm.INSTANCE, dims](channels, affine=True)
    return Norm[NORMS[kind], dims](channels)


def act_layer(kind: str) -> nn.Module:
    if kind not in ACTS:
        raise KitsegError(f"unknown activation {kind!r}; choose one of {sorted(ACTS)}")
    if ACTS[kind] is None:
        return nn.Identity()
    if kind == "leakyrelu":  # nnU-Net's and Zhang et al.'s slope
        return Act[Act.LEAKYRELU](negative_slope=0.01)
    if kind == "relu":
        return Act[Act.RELU]()
    return Act[ACTS[kind]]()


class ConvNormAct(nn.Sequential):
    """conv -> norm -> activation (the unit of the plain U-Nets)."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, kernel: IntOrSeq = 3, stride: IntOrSeq = 1,
                 dilation: IntOrSeq = 1, norm: str = "instance", act: str = "leakyrelu"):
        super().__init__(conv(dims, in_ch, out_ch, kernel, stride, dilation, bias=norm == "none"),
                         norm_layer(dims, norm, out_ch), act_layer(act))


class DoubleConv(nn.Sequential):
    """Two ConvNormAct units (one U-Net level); the first may be strided or dilated."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, kernel: IntOrSeq = 3, stride: IntOrSeq = 1,
                 norm: str = "instance", act: str = "leakyrelu", first_kernel: IntOrSeq | None = None):
        super().__init__(ConvNormAct(dims, in_ch, out_ch, first_kernel or kernel, stride, 1, norm, act),
                         ConvNormAct(dims, out_ch, out_ch, kernel, 1, 1, norm, act))


class PreActResBlock(nn.Module):
    """Pre-activation residual block: x + conv(act(norm(conv(act(norm(x)))))).

    A 1x1 convolution projects the shortcut when the channel count or the stride changes (Zhang et
    al. section 2.2: the decoder blocks "reduce the feature size by 2 in the first convolution and
    use a 1x1x1 convolution before residual connection"). ``first_kernel`` lets the first conv
    differ. ``residual=False`` drops the shortcut (the ablation without residual blocks).
    """

    def __init__(self, dims: int, in_ch: int, out_ch: int, kernel: IntOrSeq = 3, stride: IntOrSeq = 1,
                 norm: str = "instance", act: str = "relu", first_kernel: IntOrSeq | None = None,
                 dilation: IntOrSeq = 1, residual: bool = True):
        super().__init__()
        self.residual = residual
        self.norm1, self.act1 = norm_layer(dims, norm, in_ch), act_layer(act)
        self.conv1 = conv(dims, in_ch, out_ch, first_kernel or kernel, stride, dilation, bias=norm == "none")
        self.norm2, self.act2 = norm_layer(dims, norm, out_ch), act_layer(act)
        self.conv2 = conv(dims, out_ch, out_ch, kernel, 1, dilation)
        needs_proj = residual and (in_ch != out_ch or any(s != 1 for s in tup(stride, dims)))
        self.shortcut = conv(dims, in_ch, out_ch, 1, stride, bias=False) if needs_proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.act1(self.norm1(x)))
        y = self.conv2(self.act2(self.norm2(y)))
        return y + self.shortcut(x) if self.residual else y


class ResBlock(nn.Module):
    """Post-activation residual block (conv-norm-act, conv-norm, add, act), as in ResNet / nnU-Net ResEnc."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, kernel: IntOrSeq = 3, stride: IntOrSeq = 1,
                 norm: str = "instance", act: str = "leakyrelu", dilation: IntOrSeq = 1, n_convs: int = 2):
        super().__init__()
        layers: list[nn.Module] = [ConvNormAct(dims, in_ch, out_ch, kernel, stride, dilation, norm, act)]
        for i in range(1, n_convs):
            last = i == n_convs - 1
            layers.append(ConvNormAct(dims, out_ch, out_ch, kernel, 1, dilation, norm, "none" if last else act))
        self.body = nn.Sequential(*layers)
        needs_proj = in_ch != out_ch or any(s != 1 for s in tup(stride, dims))
        self.shortcut = (nn.Sequential(conv(dims, in_ch, out_ch, 1, stride, bias=False), norm_layer(dims, norm, out_ch))
                         if needs_proj else nn.Identity())
        self.act = act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck block (He et al. 2016): 1x1 (-> mid), 3x3 (dilated), 1x1 (-> out), each with norm;
    activation after the first two and after the addition; a 1x1 projection when the width changes."""

    def __init__(self, dims: int, in_ch: int, mid_ch: int, out_ch: int, dilation: int = 1, norm: str = "batch",
                 act: str = "relu"):
        super().__init__()
        self.body = nn.Sequential(ConvNormAct(dims, in_ch, mid_ch, 1, 1, 1, norm, act),
                                  ConvNormAct(dims, mid_ch, mid_ch, 3, 1, dilation, norm, act),
                                  ConvNormAct(dims, mid_ch, out_ch, 1, 1, 1, norm, "none"))
        self.shortcut = (nn.Sequential(conv(dims, in_ch, out_ch, 1, bias=False), norm_layer(dims, norm, out_ch))
                         if in_ch != out_ch else nn.Identity())
        self.act = act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): global average pool, FC(C -> C/r), ReLU, FC(C/r -> C), sigmoid."""

    def __init__(self, dims: int, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.pool = Pool[Pool.ADAPTIVEAVG, dims](1)
        self.fc = nn.Sequential(conv(dims, channels, hidden, 1), nn.ReLU(inplace=True), conv(dims, hidden, channels, 1),
                                nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(self.pool(x))


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) on a skip connection.

    ``x`` is the skip feature map, ``g`` the coarser gating signal already brought to ``x``'s size by
    the decoder (here: the upsampled decoder feature). alpha = sigmoid(psi(relu(Wx x + Wg g))); out = x * alpha.
    """

    def __init__(self, dims: int, x_ch: int, g_ch: int, inter_ch: int | None = None, norm: str = "instance"):
        super().__init__()
        inter = inter_ch or max(1, x_ch // 2)
        self.wx = nn.Sequential(conv(dims, x_ch, inter, 1, bias=False), norm_layer(dims, norm, inter))
        self.wg = nn.Sequential(conv(dims, g_ch, inter, 1, bias=False), norm_layer(dims, norm, inter))
        self.psi = nn.Sequential(nn.ReLU(inplace=False), conv(dims, inter, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * self.psi(self.wx(x) + self.wg(g))


class PyramidPooling(nn.Module):
    """Pyramid pooling module of the 3D FCN paper: a shortcut and one branch per pooling kernel.

    Each branch (section II.A.2: "a pooling layer, a convolution layer and a deconvolution layer"):
    average pooling with kernel = stride = k, a 1x1 convolution to ``branch_ch`` features + ReLU
    (no norm: the coarsest branch may pool to a single voxel), and a transposed convolution with
    kernel = stride = k back to the input size (``grouped_up``: one kernel per channel, as FCN's
    upsampling deconvolutions, instead of a full ``branch_ch`` x ``branch_ch`` one, whose k = 16
    kernel alone holds branch_ch^2 x 4096 weights); the shortcut and all branches are concatenated
    (output ``channels + len(kernels) * branch_ch``). The input size must be divisible by every kernel.
    """

    def __init__(self, dims: int, channels: int, kernels: Sequence[int] = (2, 4, 8, 16), branch_ch: int | None = None,
                 act: str = "relu", grouped_up: bool = False):
        super().__init__()
        bc = branch_ch or max(1, channels // len(kernels))
        self.kernels = tuple(int(k) for k in kernels)

        def up(k: int) -> nn.Module:
            if not grouped_up:
                return up_conv(dims, bc, bc, k)
            s = tup(k, dims)  # one k^3 kernel per channel (FCN's per-channel deconvolution): bc * k^3 weights
            return Conv[Conv.CONVTRANS, dims](bc, bc, kernel_size=s, stride=s, groups=bc)

        self.branches = nn.ModuleList(
            nn.Sequential(Pool[Pool.AVG, dims](kernel_size=k, stride=k), conv(dims, channels, bc, 1), act_layer(act),
                          up(k))
            for k in self.kernels)
        self.out_channels = channels + len(self.kernels) * bc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] + [b(x) for b in self.branches], dim=1)


class HDCBlock(nn.Module):
    """Hybrid dilated convolutions: ConvNormAct layers with dilations e.g. (2, 3, 5) (Wang et al. 2018).

    Co-prime dilation rates avoid the gridding artefact of repeated equal dilations; a residual
    connection adds the block's input (2.5D VNet paper, the bottom of the network).
    """

    def __init__(self, dims: int, channels: int, dilations: Sequence[int] = (2, 3, 5), kernel: IntOrSeq = 3,
                 norm: str = "instance", act: str = "prelu"):
        super().__init__()
        self.body = nn.Sequential(*(ConvNormAct(dims, channels, channels, kernel, 1, d, norm, act) for d in dilations))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DeepSupervisionHead(nn.Module):
    """1x1 convolution to the output classes, then (if ``scale`` > 1) upsampling by ``scale``.

    ``mode="transpose"`` upsamples with a learned transposed conv, ``"trilinear"``/``"bilinear"`` or
    ``"nearest"`` with a fixed interpolation; ``scale=1`` keeps the head at its own resolution.
    """

    def __init__(self, dims: int, in_ch: int, out_ch: int, scale: IntOrSeq = 1, mode: str = "linear"):
        super().__init__()
        self.conv = conv(dims, in_ch, out_ch, 1)
        s = tup(scale, dims)
        if all(v == 1 for v in s):
            self.up: nn.Module = nn.Identity()
        elif mode == "transpose":
            self.up = up_conv(dims, out_ch, out_ch, s)
        elif mode in ("linear", "nearest"):
            interp = ("trilinear" if dims == 3 else "bilinear") if mode == "linear" else "nearest"
            self.up = nn.Upsample(scale_factor=tuple(float(v) for v in s), mode=interp,
                                  **({"align_corners": False} if mode == "linear" else {}))
        else:
            raise KitsegError(f"unknown deep-supervision upsampling {mode!r}; choose transpose, linear or nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.conv(x))


def deep_supervision_outputs(net: nn.Module, out: torch.Tensor, decoded: Sequence[torch.Tensor]):
    """A U-Net's return value: ``out`` (eval mode, or no deep supervision), else
    ``[out, head_1(level 1), head_2(level 2), ...]`` with ``decoded`` the decoder outputs, coarsest
    first (``decoded[-1]`` full resolution, ``decoded[-2]`` level 1, ...) and ``net.ds_heads``."""
    if not (net.deep_supervision and net.training):
        return out
    return [out, *(head(decoded[-2 - j]) for j, head in enumerate(net.ds_heads))]


def cumulative_scales(kernels: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Cumulative downsampling factor after each pooling step: [(1,..), k0, k0*k1, ...]."""
    out = [tuple(1 for _ in kernels[0])] if kernels else []
    for k in kernels:
        out.append(tuple(a * b for a, b in zip(out[-1], k)))
    return out
