"""The inference modes a recipe names (``stage.inference.mode``, registered in ``kitseg.registry``).

Each is ``mode(x, stage, predictor, net, **kw) -> probabilities``: ``x`` is the stage's input
(C, z, y, x), ``kw`` the device, size divisor and progress callback. 2D (2.5D) networks always
predict slice by slice (``slices25d``); a stage without a patch size predicts the whole volume.
"""

from __future__ import annotations

import torch

from kitseg.errors import KitsegError
from kitseg.inference import variants
from kitseg.inference.sliding import sliding_window
from kitseg.recipes.schema import Stage

# ``inference.mode: whole`` predicts a volume in one pass up to this many voxels (a KiTS19 CT at 4 mm
# has at most 1.8e6); larger ones use windows of the stage's patch so that memory stays bounded.
WHOLE_MAX_VOXELS = 4_000_000


def slices25d_mode(x: torch.Tensor, stage: Stage, predictor, net, **kw) -> torch.Tensor:
    if int(getattr(net, "dims", 3)) != 2:
        raise KitsegError(f"stage {stage.name!r}: inference mode {stage.inference.mode!r} needs a 2D (2.5D) network")
    spec, patch = stage.inference, stage.patch_size
    in_plane = list(patch[-2:]) if patch and spec.mode == "sliding_window" else None
    return variants.slices25d(x, predictor, int(getattr(net, "context_slices", 1)), in_plane=in_plane,
                              overlap=spec.overlap, batch_size=max(1, spec.batch_size), **kw)


def whole_mode(x: torch.Tensor, stage: Stage, predictor, net, **kw) -> torch.Tensor:
    spec, patch = stage.inference, stage.patch_size
    if patch is None or x[0].numel() <= WHOLE_MAX_VOXELS:
        return variants.whole(x, predictor, min_size=patch, **kw)
    # too large for one pass (a whole-body scan): Gaussian windows of the patch
    return sliding_window(x, predictor, patch, spec.overlap, sw_batch_size=spec.batch_size, **kw)


def sliding_window_mode(x: torch.Tensor, stage: Stage, predictor, net, **kw) -> torch.Tensor:
    spec = stage.inference
    return sliding_window(x, predictor, stage.patch_size, spec.overlap,
                          weights="gaussian" if spec.gaussian else "constant", sw_batch_size=spec.batch_size, **kw)


def z_windows_mode(x: torch.Tensor, stage: Stage, predictor, net, **kw) -> torch.Tensor:
    spec, patch = stage.inference, stage.patch_size
    window = spec.window or patch[0]
    return variants.z_windows(x, predictor, window, spec.stride or window // 2,
                              spec.keep or (window // 4, window - window // 4), patch[1:], **kw)


def majority_vote_mode(x: torch.Tensor, stage: Stage, predictor, net, **kw) -> torch.Tensor:
    spec, patch = stage.inference, stage.patch_size
    return variants.majority_vote(x, predictor, spec.window or patch[0], spec.stride, patch[1:], **kw)


def mode_of(stage: Stage, dims: int) -> str:
    """The mode that runs: slice by slice for 2D networks, the whole volume without a patch size."""
    if dims == 2:
        return "slices25d"
    return "whole" if stage.patch_size is None else stage.inference.mode


__all__ = ["WHOLE_MAX_VOXELS", "mode_of"]
