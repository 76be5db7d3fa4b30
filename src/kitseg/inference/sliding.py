"""Sliding-window inference: tile a (C, Z, Y, X) or (C, Y, X) tensor, predict each window, blend.

``sliding_window(image, predictor, patch_size, overlap)`` places the windows exactly as MONAI's
``sliding_window_inference`` does (interval ``int(patch * (1 - overlap))``, the last window
shifted back to end at the border; an image smaller than the patch is padded symmetrically) and
weights them with the same Gaussian importance map (sigma = patch * ``sigma_scale``, 0.125 as
nnU-Net's sigma = patch / 8; clamped below at its smallest value or 1e-3), so the two agree to
float rounding; bench/bench_inference.py measures both (BENCHMARKS.md).

What ours adds (the reasons to keep our own function):

- padding to the network's size ``divisor`` (a ``None`` patch axis means "the whole axis",
  rounded up to the divisor) and a patch rounded up to the divisor;
- explicit ``strides`` and arbitrary per-window ``weights``, the base of the papers' variants
  (keep-the-centre z-windows, majority voting: ``kitseg.inference.variants``);
- accumulation on a chosen device and dtype: probabilities are blended in float32 on the CPU by
  default, only over the stage's grid (small for a cropped stage 2); ``accumulate_dtype=float16``
  halves that memory at ~1e-3 precision;
- on CUDA, an out-of-memory error restarts the volume with accumulation on the CPU and one window
  per batch (a CPU run never takes that path).

The predictor maps a batch (B, C, *patch) to probabilities (B, K, *patch); ensembles of folds and
mirroring TTA live inside it (``kitseg.inference.ensemble``), so one buffer serves them all.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from kitseg.errors import KitsegError

log = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]
MIN_WEIGHT = 1e-3  # MONAI's floor of the Gaussian importance map


def round_up(n: int, divisor: int) -> int:
    return int(math.ceil(n / divisor) * divisor)


def window_starts(size: int, patch: int, interval: int) -> list[int]:
    """Start indices of windows of ``patch`` voxels along an axis of ``size`` (>= patch) voxels.

    MONAI's ``dense_patch_slices`` rule: starts ``0, interval, 2 * interval, ...`` until a window
    reaches the end; the last one is shifted back to end exactly at ``size``.
    """
    if patch >= size:
        return [0]
    interval = max(1, int(interval))
    n = next(d for d in range(int(math.ceil(size / interval)) + 1) if d * interval + patch >= size) + 1
    return [min(d * interval, size - patch) for d in range(n)]


def gaussian_weights(patch: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """The Gaussian importance map of a window (float32), the centre weighted most.

    ``exp(-d^2 / (2 sigma^2))`` per axis with ``sigma = sigma_scale * patch`` (nnU-Net: patch / 8),
    multiplied over the axes and clamped below at ``max(min, 1e-3)``, as MONAI's
    ``compute_importance_map(mode="gaussian")``.
    """
    w = None
    for i, n in enumerate(patch):
        d = torch.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=torch.float32)
        g = torch.exp(d**2 / (-2 * (n * sigma_scale) ** 2))
        w = g if w is None else w.unsqueeze(-1) * g[(None,) * i]
    assert w is not None
    return w.clamp_(min=max(float(w.min()), MIN_WEIGHT))


def _pads(spatial: Sequence[int], patch: Sequence[int | None], divisor: Sequence[int]) -> tuple[list, list]:
    """Per-axis (patch, (before, after)) so that the padded image is >= the patch and divisible."""
    patches, pads = [], []
    for n, p, d in zip(spatial, patch, divisor):
        p = round_up(n, d) if p is None else round_up(int(p), d)
        target = max(n, p)
        diff = target - n
        patches.append(p)
        pads.append((diff // 2, diff - diff // 2))  # symmetric, as MONAI
    return patches, pads


def sliding_window(image: torch.Tensor, predictor: Predictor, patch_size: Sequence[int | None],
                   overlap: float | Sequence[float] = 0.5, *, strides: Sequence[int | None] | None = None,
                   weights: str | torch.Tensor = "gaussian", sigma_scale: float = 0.125, vote: bool = False,
                   sw_batch_size: int = 1, device: str | torch.device = "cpu",
                   accumulate_device: str | torch.device | None = None,
                   accumulate_dtype: torch.dtype = torch.float32, divisor: Sequence[int] | None = None,
                   pad_value: float | Sequence[float] = 0.0, progress: Callable[[int, int], None] | None = None
                   ) -> torch.Tensor:
    """Predict ``image`` (C, *spatial) window by window; return blended probabilities (K, *spatial).

    ``patch_size``: the window (None on an axis: the whole axis). ``overlap`` (per axis or one
    value) gives MONAI's interval ``int(patch * (1 - overlap))``; ``strides`` overrides it per axis.
    ``weights``: "gaussian" (nnU-Net/MONAI), "constant", or a tensor of the patch's shape.
    ``vote``: each window casts one vote per voxel for its argmax class (3D FCN-PPM II.B majority
    voting); the result is the fraction of votes. Where classes tie for the most votes, the one
    with the larger summed probability over the windows wins: it gets ``TIE_BONUS / n`` on top of
    its fraction (n windows; one vote is 1 / n, so a bonus never overturns a majority). The paper
    does not say how ties break; a fixed order (e.g. towards background) would erode every boundary
    where two windows disagree. ``divisor``: the network's per-axis size divisor. ``pad_value``:
    what fills the border an image smaller than the patch (or not divisible) is padded with, one
    value or one per channel (``kitseg.stages.inputs.pad_values``: what training pads with).
    ``accumulate_device``: where the blended volume lives (default: ``device``); on CUDA an
    out-of-memory error retries with the CPU and one window per batch.
    """
    device = torch.device(device)
    acc = torch.device(accumulate_device) if accumulate_device is not None else device
    kw = dict(strides=strides, weights=weights, sigma_scale=sigma_scale, vote=vote, device=device,
              accumulate_dtype=accumulate_dtype, divisor=divisor, pad_value=pad_value, progress=progress)
    try:
        return _sliding_window(image, predictor, patch_size, overlap, sw_batch_size=sw_batch_size,
                               accumulate_device=acc, **kw)
    except torch.OutOfMemoryError:
        if acc.type == "cpu" and sw_batch_size == 1:
            raise KitsegError(f"out of memory on {device} even with one window per batch and accumulation on the "
                              "CPU; use a smaller patch or --device cpu") from None
        log.warning("out of memory on %s: retrying with accumulation on the CPU and one window per batch", device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return _sliding_window(image, predictor, patch_size, overlap, sw_batch_size=1,
                               accumulate_device=torch.device("cpu"), **kw)


def _sliding_window(image, predictor, patch_size, overlap, *, strides, weights, sigma_scale, vote, sw_batch_size,
                    device, accumulate_device, accumulate_dtype, divisor, pad_value, progress) -> torch.Tensor:
    if image.ndim not in (3, 4):
        raise KitsegError(f"sliding_window takes (C, Z, Y, X) or (C, Y, X) tensors, got shape {tuple(image.shape)}")
    dims = image.ndim - 1
    spatial = tuple(int(n) for n in image.shape[1:])
    if len(patch_size) != dims:
        raise KitsegError(f"patch size {tuple(patch_size)} has {len(patch_size)} axes; the image has {dims}")
    divisor = tuple(int(d) for d in (divisor or (1,) * dims))
    patch, pads = _pads(spatial, patch_size, divisor)
    if any(a or b for a, b in pads):
        image = pad_channels(image, pads, pad_value)
    padded = tuple(int(n) for n in image.shape[1:])
    overlaps = [float(overlap)] * dims if isinstance(overlap, (int, float)) else [float(o) for o in overlap]
    if len(overlaps) != dims or not all(0 <= o < 1 for o in overlaps):
        raise KitsegError(f"overlap must be in [0, 1) per axis, got {overlap}")
    starts = []
    for axis in range(dims):
        step = strides[axis] if strides is not None and strides[axis] is not None else None
        if step is None:
            step = patch[axis] if patch[axis] == padded[axis] else int(patch[axis] * (1 - overlaps[axis]))
        starts.append(window_starts(padded[axis], patch[axis], max(1, int(step))))
    if isinstance(weights, torch.Tensor):
        if tuple(weights.shape) != tuple(patch):
            raise KitsegError(f"window weights have shape {tuple(weights.shape)}, the patch is {tuple(patch)}")
        w = weights.to(torch.float32)
    elif weights == "gaussian" and not vote:
        w = gaussian_weights(patch, sigma_scale)
    else:
        w = torch.ones(patch, dtype=torch.float32)
    w_dev = w.to(device)
    w_acc = w.to(accumulate_device, accumulate_dtype)
    windows = list(itertools.product(*starts))
    out = norm = psum = None
    with torch.inference_mode():
        for i in range(0, len(windows), max(1, int(sw_batch_size))):
            batch = windows[i:i + max(1, int(sw_batch_size))]
            boxes = [tuple(slice(s, s + p) for s, p in zip(start, patch)) for start in batch]
            if len(boxes) == 1:
                x = image[(slice(None), *boxes[0])].unsqueeze(0)
            else:
                x = torch.stack([image[(slice(None), *b)] for b in boxes])
            pred = predictor(x.to(device))
            if pred.ndim != dims + 2 or tuple(pred.shape[2:]) != tuple(patch):
                raise KitsegError(f"the network returned shape {tuple(pred.shape)} for an input of {tuple(x.shape)}")
            if vote:
                probs = pred.to(accumulate_device, accumulate_dtype)
                pred = F.one_hot(pred.argmax(1), pred.shape[1]).movedim(-1, 1).to(torch.float32)
            else:
                pred = pred * w_dev  # not in place: a predictor may return a view of its input
            pred = pred.to(accumulate_device, accumulate_dtype)
            if out is None:
                out = torch.zeros((pred.shape[1], *padded), dtype=accumulate_dtype, device=accumulate_device)
                norm = torch.zeros(padded, dtype=accumulate_dtype, device=accumulate_device)
                psum = torch.zeros_like(out) if vote else None
            for j, b in enumerate(boxes):
                out[(slice(None), *b)] += pred[j]
                norm[b] += w_acc
                if psum is not None:
                    psum[(slice(None), *b)] += probs[j]
            if progress is not None:
                progress(i + len(batch), len(windows))
        assert out is not None and norm is not None
        if psum is not None:
            _break_ties(out, psum, norm)
        out /= norm
    crop = tuple(slice(a, a + n) for (a, _), n in zip(pads, spatial))
    return out[(slice(None), *crop)]


def pad_channels(image: torch.Tensor, pads: Sequence[tuple[int, int]], value: float | Sequence[float]
                 ) -> torch.Tensor:
    """``image`` (C, *spatial) padded by ``pads`` (before, after) per spatial axis with ``value``: one
    number, or one per channel (a CT channel with its darkest value and a mask with 0, as training does)."""
    if isinstance(value, (int, float)):
        flat = [v for a, b in reversed(pads) for v in (a, b)]
        return F.pad(image, flat, value=float(value))
    values = torch.as_tensor([float(v) for v in value], dtype=image.dtype)
    if len(values) != image.shape[0]:
        raise KitsegError(f"{len(values)} pad values for an image of {image.shape[0]} channels")
    shape = (image.shape[0], *(n + a + b for n, (a, b) in zip(image.shape[1:], pads)))
    out = values.view(-1, *[1] * (image.ndim - 1)).expand(shape).clone()
    out[(slice(None), *(slice(a, a + n) for n, (a, _) in zip(image.shape[1:], pads)))] = image
    return out


TIE_BONUS = 1e-3  # majority vote: what the tie winner gets on top of its vote count (a vote is 1)


def _break_ties(votes: torch.Tensor, psum: torch.Tensor, norm: torch.Tensor) -> None:
    """In place: where several classes share the most votes, the one of them with the largest summed
    probability gets ``TIE_BONUS`` votes more (``norm`` is unchanged, so its fraction grows by
    ``TIE_BONUS / n``)."""
    top = votes.max(0).values
    tied = votes >= top - 0.5  # vote counts are whole numbers
    ties = tied.sum(0) > 1
    if not bool(ties.any()):
        return
    winner = torch.where(tied, psum, torch.full_like(psum, -torch.inf)).argmax(0)
    bonus = F.one_hot(winner, votes.shape[0]).movedim(-1, 0).to(votes.dtype) * ties.to(votes.dtype)
    votes += TIE_BONUS * bonus


def count_windows(spatial: Sequence[int], patch_size: Sequence[int | None], overlap: float = 0.5,
                  divisor: Sequence[int] | None = None) -> int:
    """How many windows ``sliding_window`` runs on an image of this spatial shape (for estimates)."""
    divisor = divisor or (1,) * len(spatial)
    patch, pads = _pads(spatial, patch_size, divisor)
    padded = [n + a + b for n, (a, b) in zip(spatial, pads)]
    return math.prod(len(window_starts(n, p, p if p == n else max(1, int(p * (1 - overlap)))))
                     for n, p in zip(padded, patch))


__all__ = ["Predictor", "count_windows", "gaussian_weights", "round_up", "sliding_window", "window_starts"]
