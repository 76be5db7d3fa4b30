"""Receptive field and parameter counts of the registered networks (for ``kitseg nets`` and the docs).

The receptive field is measured, not derived by hand: it is the support of the gradient of the
centre output voxel with respect to the input, in a copy of the network made linear and positive
(norms, activations and squeeze-and-excitation removed, max pooling read as average pooling, every
weight a positive constant), so no path can cancel or be switched off and the support is exactly
the set of input voxels an output voxel can depend on (the theoretical receptive field). The
receptive field does not depend on the width, so it is measured on a narrow copy (base features 2).
Per axis, the input is long on that axis and minimal (one size divisor) on the others. Blocks
that pool globally (PSPNet's 1x1 bin) make it the whole input: reported as ``None`` ("global").
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from kitseg.nets.blocks import SEBlock

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
_DTYPE = torch.float64
_ACTS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Sigmoid, nn.ELU, nn.GELU)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def linearized(net: nn.Module) -> nn.Module:
    """A copy with norms/activations/SE removed, max pooling as average pooling, positive constant weights."""
    net = copy.deepcopy(net).to(_DTYPE).eval()

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, _NORMS + _ACTS + (SEBlock, nn.Dropout)):
                setattr(module, name, nn.Identity())
            elif isinstance(child, (nn.MaxPool2d, nn.MaxPool3d)):
                avg = nn.AvgPool2d if isinstance(child, nn.MaxPool2d) else nn.AvgPool3d
                setattr(module, name, avg(child.kernel_size, child.stride, child.padding))
            else:
                swap(child)

    swap(net)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0 / max(1, p[0].numel()) if p.dim() > 1 else 1.0)
    return net


def _support(net: nn.Module, shape: Sequence[int], in_channels: int, axis: int,
             divisor: Sequence[int]) -> tuple[int, int]:
    """Widest support along ``axis`` over two output probes: one on the coarsest grid (an index multiple
    of the divisor) and one half a period off it; returns (width, 1 if a probe touches the input border)."""
    x = torch.ones(2, in_channels, *shape, dtype=_DTYPE, requires_grad=True)
    out = net(x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    centre = [(s // 2) // d * d for s, d in zip(out.shape[2:], divisor)]
    shifted = list(centre)
    shifted[axis] += divisor[axis] // 2
    (out[(0, 0, *centre)] + out[(1, 0, *shifted)]).backward()
    width, touches = 0, 0
    for probe in range(2):
        g = x.grad[probe].abs().sum(dim=0)
        other = tuple(d for d in range(g.dim()) if d != axis)
        profile = g.sum(dim=other) if other else g
        nz = torch.nonzero(profile > 0).flatten()
        lo, hi = int(nz.min()), int(nz.max())
        width = max(width, hi - lo + 1)
        touches |= int(lo == 0 or hi == shape[axis] - 1)
    return width, touches


def receptive_field(net: nn.Module, in_channels: int, max_size: int = 2048, start: int = 128) -> tuple[int | None, ...]:
    """Per-axis receptive field (voxels) of ``net``'s centre output voxel; ``None`` where it spans any input.

    ``in_channels`` is the network's actual input channel count; ``net.size_divisor`` sets the
    sizes tried. The axis length starts at ``start`` and doubles until the support stops touching
    the input's borders. Pooling makes the support depend on the output position: the widest of
    two probes (the centre on the coarsest grid, and half a period off it) is reported; on the
    grid itself it can be smaller by up to the divisor (e.g. 380 vs 412 for ``unet3d_zhang`` in-plane).
    """
    lin = linearized(net)
    div = tuple(int(d) for d in net.size_divisor)
    result: list[int | None] = []
    for axis in range(len(div)):
        length = max(2 * div[axis], start)
        while True:
            length = -(-length // div[axis]) * div[axis]
            shape = [max(d, 1) for d in div]
            shape[axis] = length
            width, touches = _support(lin, shape, in_channels, axis, div)
            if not touches:
                result.append(width)
                break
            if 2 * length > max_size:
                result.append(None)
                break
            length *= 2
    return tuple(result)
