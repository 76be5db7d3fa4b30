"""Grid arithmetic of resampling, without torch: target shapes, new affines, interpolation taps.

Convention (field of view preserved): output voxel ``j`` of ``n_out`` along an axis of ``n_in``
voxels samples the input's continuous index ``(j + 0.5) * n_in / n_out - 0.5``, so the outer faces
of the first and last voxel boxes coincide (torch's ``align_corners=False``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

CUBIC_A = -0.75  # Keys' cubic kernel parameter, the one torch's bicubic mode uses


def _taps(n_in: int, n_out: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (n_out, k) that give each output sample along one axis."""
    j = np.arange(n_out)
    if kind == "nearest":  # floor((j + 0.5) * n_in / n_out), in exact integer arithmetic
        idx = np.minimum(((2 * j + 1) * n_in) // (2 * n_out), n_in - 1)
        return idx[:, None], np.ones((n_out, 1))
    src = (j + 0.5) * (n_in / n_out) - 0.5
    if kind == "linear":
        src = np.clip(src, 0.0, n_in - 1)
        i0 = np.minimum(np.floor(src).astype(np.int64), max(n_in - 2, 0))
        w1 = src - i0
        return np.stack([i0, np.minimum(i0 + 1, n_in - 1)], 1), np.stack([1.0 - w1, w1], 1)
    if kind == "cubic":  # Keys' kernel on the four neighbours, indices clamped at the borders (as torch)
        i1 = np.floor(src).astype(np.int64)
        t = src - i1
        a = CUBIC_A
        w = np.stack([((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                      ((a + 2) * t - (a + 3)) * t * t + 1,
                      ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
                      ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a], 1)
        idx = np.clip(np.stack([i1 - 1, i1, i1 + 1, i1 + 2], 1), 0, n_in - 1)
        return idx, w
    raise ValueError(kind)


def is_anisotropic(spacing: Sequence[float], threshold: float = 3.0) -> bool:
    """nnU-Net's rule: the largest spacing exceeds ``threshold`` x the smallest."""
    return max(spacing) > threshold * min(spacing)


def grid_affine(affine: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int]) -> np.ndarray:
    """The affine of ``out_shape`` voxels covering the same field of view as ``in_shape`` voxels."""
    affine = np.asarray(affine, dtype=float)
    ratio = np.asarray(in_shape, float) / np.asarray(out_shape, float)
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] * ratio[None, :]
    new[:3, 3] = affine[:3, :3] @ (0.5 * ratio - 0.5) + affine[:3, 3]
    return new


def shape_for_spacing(shape: Sequence[int], spacing: Sequence[float],
                      target: Sequence[float | None]) -> tuple[int, int, int]:
    """nnU-Net's rule ``round(n * spacing / target)`` per axis (at least 1); None keeps the axis."""
    return tuple(int(n) if t is None else max(1, int(round(n * s / t)))  # type: ignore[return-value]
                 for n, s, t in zip(shape, spacing, target))


def argmax_of(maps: Iterable[tuple[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The per-label argmax after interpolation (nnU-Net): for (value, map) pairs, the value of the
    largest map at each voxel (the first on ties) as uint8, and that largest map (float32)."""
    best_p = best = None
    for value, p in maps:
        if best is None:
            best_p, best = np.array(p, dtype=np.float32), np.full(p.shape, value, dtype=np.uint8)
        else:
            win = p > best_p
            best[win] = value
            np.maximum(best_p, p, out=best_p)
    if best is None:
        raise ValueError("argmax_of needs at least one map")
    return best, best_p
