"""The papers' networks, one file each, built from shared blocks (``kitseg.nets.blocks``).

``NETWORKS`` is the explicit registry (name -> ``NetInfo``); ``build_network(name, in_channels,
out_channels, **params)`` builds one. Every network takes (N, C, Z, Y, X) (3D) or (N, C, Y, X)
(2D) and returns logits of the same spatial size; in training mode a network with
``net.deep_supervision`` returns ``[full, 1/2, 1/4, ...]`` (finest first, ``net.ds_scales`` gives
each output's downsampling factor; (1, 1, 1) means upsampled to full size). Input sizes must be
divisible by ``required_divisor(net)`` per axis (inference pads to it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from kitseg.errors import KitsegError
from kitseg.nets import (
    fcn_ppm,
    pspnet2d,
    resenc_unet3d,
    resunet3d_ds,
    resunet_ds_zhang,
    tunet,
    unet,
    unet3d_zhang,
    vnet25d_ms,
)
from kitseg.nets.plan import pool_kernels, pool_plan, size_divisor

__all__ = ["NETWORKS", "NetInfo", "accepted_params", "build_network", "check_input_size", "pool_kernels", "pool_plan",
           "required_divisor", "size_divisor"]


@dataclass(frozen=True)
class NetInfo:
    """A registered network: its constructor, where it comes from, and its paper-size and tiny configs.

    ``activation`` is the output activation the loss and inference apply to the logits;
    ``paper_patch`` is the patch (spatial size) the paper trains it on, used in docs.
    """

    builder: Callable[..., nn.Module]
    paper: str
    dims: Literal[2, 3]
    activation: Literal["softmax", "sigmoid"]
    paper_params: dict[str, Any] = field(default_factory=dict)
    tiny_params: dict[str, Any] = field(default_factory=dict)
    paper_in_channels: int = 1
    paper_out_channels: int = 3
    paper_patch: tuple[int, ...] = ()
    notes: str = ""


_ZHANG = "Zhang et al. 2019, cascaded volumetric CNN (KiTS19 4th place)"
_TUNET = "TuNet, cascaded 3D U-Nets (KiTS19)"
_RESV = "3D ResUNet + 2.5D multi-scale VNet (KiTS19)"
_FCN = "3D FCN with pyramid pooling for renal CT"

NETWORKS: dict[str, NetInfo] = {
    "unet3d_zhang": NetInfo(
        unet3d_zhang.unet3d_zhang, f"{_ZHANG}, stage 1, section 2.1", 3, "softmax",
        {"base_features": 30, "pool_counts": (4, 5, 5)}, {"base_features": 4, "pool_counts": (2, 3, 3)},
        1, 2, (80, 160, 160), "features capped at 320 (nnU-Net); the text only says 'doubles'"),
    "resunet_ds_zhang": NetInfo(
        resunet_ds_zhang.resunet_ds_zhang, f"{_ZHANG}, stage 2, section 2.2", 3, "softmax",
        {"base_features": 30, "pool_counts": (3, 5, 5)}, {"base_features": 4, "pool_counts": (1, 2, 2)},
        2, 3, (40, 128, 128), "CT + stage-1 kidney mask; aux heads upsampled to full size"),
    "tunet_lnet": NetInfo(
        tunet.tunet_lnet, f"{_TUNET}, L-Net, section 2.1", 3, "sigmoid",
        {"base_features": 16, "pool_counts": 4}, {"base_features": 4, "pool_counts": 2},
        1, 1, (64, 128, 128), "whole region on the downsampled volume; widths not given, ours"),
    "tunet_wnet": NetInfo(
        tunet.tunet_wnet, f"{_TUNET}, W-Net, sections 2.2-2.3", 3, "sigmoid",
        {"base_features": 16, "pool_counts": 4, "se": True},
        {"base_features": 4, "pool_counts": 2, "se": True, "se_reduction": 1},
        1, 1, (128, 128, 128), "input pyramid; se=True is the TuNet + SEB variant"),
    "tunet_tnet": NetInfo(
        tunet.tunet_tnet, f"{_TUNET}, T-Net, sections 2.2-2.3", 3, "sigmoid",
        {"base_features": 16, "pool_counts": 4, "se": True},
        {"base_features": 4, "pool_counts": 2, "se": True, "se_reduction": 1},
        2, 1, (128, 128, 128), "CT + W-Net probability"),
    "resunet3d_ds": NetInfo(
        resunet3d_ds.resunet3d_ds, f"{_RESV}, kidney network, section 2.1", 3, "softmax",
        {"base_features": 16, "pool_counts": 3}, {"base_features": 4, "pool_counts": 2},
        1, 2, (64, 256, 256), "4 levels, 4 full-size outputs (mu-weighted loss)"),
    "vnet25d_ms": NetInfo(
        vnet25d_ms.vnet25d_ms, f"{_RESV}, tumor network, section 3.2", 2, "softmax",
        {"base_features": 16, "n_levels": 5, "context_slices": 3}, {"base_features": 4, "n_levels": 3},
        1, 2, (512, 512), "2.5D: context_slices x in_channels input channels; predicts the centre slice"),
    "fcn_ppm": NetInfo(
        fcn_ppm.fcn_ppm, f"{_FCN}, section II.A", 3, "softmax",
        {"base_features": 32, "block": "basic", "ppm_upsample": "grouped"},
        {"base_features": 2, "blocks": (1, 1, 1), "ppm_kernels": (2, 4)},
        1, 3, (64, 128, 128), "13 residual blocks, 39 convolutions in the whole network, 2 poolings, dilation 2, "
        "PPM (2, 4, 8, 16) with per-channel deconvolutions"),
    "unet2d": NetInfo(
        unet.unet2d, "Baseline: 2D U-Net (Ronneberger et al. 2015)", 2, "softmax",
        {"base_features": 32, "n_levels": 5}, {"base_features": 4, "n_levels": 3},
        1, 3, (512, 512), "batch norm + ReLU"),
    "unet3d": NetInfo(
        unet.unet3d, "Baseline: 3D U-Net (Cicek et al. 2016) with nnU-Net conv units", 3, "softmax",
        {"base_features": 32, "pool_counts": (4, 5, 5)}, {"base_features": 4, "pool_counts": 2},
        1, 3, (80, 160, 160), "instance norm + leaky ReLU"),
    "resenc_unet3d": NetInfo(
        resenc_unet3d.resenc_unet3d, "Baseline: nnU-Net-like residual-encoder 3D U-Net (ResEnc M)", 3, "softmax",
        {"base_features": 32, "pool_counts": (5, 5, 5)},
        {"base_features": 4, "pool_counts": 2, "blocks_per_stage": (1, 2, 1)},
        1, 3, (128, 128, 128), "aux heads at their own scale"),
    "pspnet2d": NetInfo(
        pspnet2d.pspnet2d, "Baseline: 2D PSPNet (Zhao et al. 2017), compared in the 3D FCN paper", 2, "softmax",
        {"base_features": 64}, {"base_features": 2, "blocks": (1, 1, 1, 1), "n_pools": 1},
        1, 3, (512, 512), "dilated ResNet-50-like backbone, output stride 8"),
}


def _accepted(builder: Callable[..., nn.Module]) -> set[str]:
    params = inspect.signature(builder).parameters
    return {n for n in params if n not in ("in_channels", "out_channels")}


def accepted_params(name: str) -> set[str]:
    """The parameter names the registered network ``name`` takes (besides its channel counts)."""
    if name not in NETWORKS:
        raise KitsegError(f"unknown network {name!r}; registered networks: {', '.join(NETWORKS)}")
    return _accepted(NETWORKS[name].builder)


def build_network(name: str, in_channels: int, out_channels: int, **params: Any) -> nn.Module:
    """Build the registered network ``name``; unknown names or parameters raise ``KitsegError``."""
    if name not in NETWORKS:
        raise KitsegError(f"unknown network {name!r}; registered networks: {', '.join(NETWORKS)}")
    info = NETWORKS[name]
    accepted = _accepted(info.builder)
    bad = sorted(set(params) - accepted)
    if bad:
        raise KitsegError(f"network {name!r} has no parameter {bad[0]!r}; it accepts: {', '.join(sorted(accepted))}")
    if int(in_channels) < 1 or int(out_channels) < 1:
        raise KitsegError(f"network {name!r}: in_channels and out_channels must be >= 1, "
                          f"got {in_channels}, {out_channels}")
    try:
        return info.builder(int(in_channels), int(out_channels), **params)
    except KitsegError as exc:
        raise KitsegError(f"network {name!r}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise KitsegError(f"network {name!r}: bad parameters {params}: {exc}") from exc


def required_divisor(net: nn.Module) -> tuple[int, ...]:
    """Per-axis factor the input's spatial size must be divisible by (``net.size_divisor``)."""
    return tuple(int(d) for d in net.size_divisor)


def check_input_size(net: nn.Module, spatial_shape: Sequence[int]) -> None:
    """Raise ``KitsegError`` unless every axis of ``spatial_shape`` is divisible by the network's divisor."""
    div = required_divisor(net)
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) != len(div) or any(s < 1 or s % d for s, d in zip(shape, div)):
        raise KitsegError(f"{type(net).__name__} needs a {len(div)}D input whose size is divisible by {div} per axis, "
                          f"got {shape}; pad it (inference pads to the divisor)")
