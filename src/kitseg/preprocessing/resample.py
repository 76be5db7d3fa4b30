"""Resampling to a target spacing or shape (its exact inverse, ``restore``, is in ``kitseg.stages.grid``).

Grid convention: field of view preserved. The outer faces of the voxel boxes of the old and new
grids coincide (``new_shape * new_spacing == old_shape * old_spacing`` per axis), so output voxel
``j`` samples the old continuous index ``(j + 0.5) * n_old / n_new - 0.5``: torch's
``align_corners=False`` and SimpleITK's resampler given the origin ``old_origin + D (new_sp -
old_sp) / 2``. A target spacing becomes a shape by nnU-Net's rule ``round(n * sp / target)``.

How (measured in bench/bench_preprocessing.py, figures in BENCHMARKS.md): the slice axis is
interpolated separately (two or four slices blended per output slice, written straight into the
output), the in-plane axes with ``torch.nn.functional.interpolate`` on chunks of slices. Linear
interpolation is separable, so this *is* trilinear interpolation; no full-size temporary exists.
When the largest spacing exceeds ``anisotropy_threshold`` x the smallest (nnU-Net's rule), the
slice axis uses linear (images) or nearest (labels) interpolation whatever the in-plane order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kitseg.errors import KitsegError
from kitseg.preprocessing.grid import _taps, argmax_of, grid_affine, is_anisotropic, shape_for_spacing
from kitseg.preprocessing.records import ResampleRecord, _affine_list
from kitseg.volume import Volume

Order = Literal["linear", "cubic", "nearest", "linear_per_label"]
ORDERS = ("linear", "cubic", "nearest", "linear_per_label")
CHUNK_BYTES = 32 * 2**20  # float32 bytes of one in-plane chunk of slices


@dataclass(frozen=True)
class _Plan:
    """How to go from one (z, y, x) shape to another: taps along z, torch mode in-plane."""

    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    z_kind: str  # nearest | linear | cubic
    plane_kind: str  # nearest | linear | cubic

    @property
    def z_taps(self):
        return _taps(self.in_shape[0], self.out_shape[0], self.z_kind)

    @property
    def chunk(self) -> int:
        plane = max(self.in_shape[1] * self.in_shape[2], self.out_shape[1] * self.out_shape[2])
        return max(1, CHUNK_BYTES // (4 * plane))


def _plan(in_shape, out_shape, order: str, anisotropic: bool) -> _Plan:
    if order == "nearest":
        return _Plan(tuple(in_shape), tuple(out_shape), "nearest", "nearest")
    if order == "linear_per_label":
        return _Plan(tuple(in_shape), tuple(out_shape), "nearest" if anisotropic else "linear", "linear")
    if order == "cubic":
        return _Plan(tuple(in_shape), tuple(out_shape), "linear" if anisotropic else "cubic", "cubic")
    if order == "linear":
        return _Plan(tuple(in_shape), tuple(out_shape), "linear", "linear")
    raise KitsegError(f"unknown interpolation order {order!r}; use one of {', '.join(ORDERS)}")


def _slices_of(src: np.ndarray, label: int | None = None):
    """A function giving source slice i as float32 (the one-hot of ``label`` when given)."""
    if label is not None:
        return lambda i: (src[i] == label).astype(np.float32)
    if src.dtype == np.float32:
        return lambda i: src[i]
    return lambda i: src[i].astype(np.float32)


def _chunk_float(get, plan: _Plan, k0: int, k1: int, out: np.ndarray | None = None) -> np.ndarray:
    """Output slices k0..k1 (float32) from source slices ``get(i)``, written into ``out`` when given.

    The slice axis is blended with numpy one output slice at a time (memory-bound work that does
    not gain from threads; per-slice torch calls with 2 threads were 10x slower on a busy
    machine); the in-plane axes go through torch's interpolate on the whole chunk.
    """
    z, y, x = plan.in_shape
    nz, ny, nx = plan.out_shape
    same_plane = (y, x) == (ny, nx)
    target = out if (out is not None and same_plane) else np.empty((k1 - k0, y, x), dtype=np.float32)
    idx, w = plan.z_taps if nz != z else (None, None)
    tmp = np.empty((y, x), dtype=np.float32) if idx is not None and idx.shape[1] > 1 else None
    for k in range(k0, k1):
        o = target[k - k0]
        if idx is None:
            o[...] = get(k)
        elif idx.shape[1] == 1:
            o[...] = get(int(idx[k, 0]))
        else:
            np.multiply(get(int(idx[k, 0])), np.float32(w[k, 0]), out=o)
            for j in range(1, idx.shape[1]):
                np.multiply(get(int(idx[k, j])), np.float32(w[k, j]), out=tmp)
                o += tmp
    if same_plane:
        return target
    import torch  # only here: the slice-axis-only path (and importing this module) needs no torch
    import torch.nn.functional as F

    mode = {"linear": "bilinear", "cubic": "bicubic"}[plan.plane_kind]
    res = F.interpolate(torch.from_numpy(target)[:, None], size=(ny, nx), mode=mode, align_corners=False)[:, 0]
    if out is not None:
        out[...] = res.numpy()
        return out
    return res.numpy()


def _nearest(arr: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling by index arithmetic: never invents a value, keeps the dtype."""
    idx = [None if n == m else _taps(n, m, "nearest")[0][:, 0] for n, m in zip(arr.shape, out_shape)]
    if all(i is None for i in idx):
        return arr.copy()
    out = np.empty(tuple(out_shape), dtype=arr.dtype)
    zi = idx[0] if idx[0] is not None else np.arange(arr.shape[0])
    step = max(1, CHUNK_BYTES // max(1, arr.shape[1] * arr.shape[2] * arr.itemsize))
    for k0 in range(0, out_shape[0], step):
        part = arr[zi[k0:k0 + step]]
        if idx[1] is not None:
            part = part[:, idx[1]]
        if idx[2] is not None:
            part = part[:, :, idx[2]]
        out[k0:k0 + step] = part
    return out


def _label_chunk(src: np.ndarray, plan: _Plan, labels: Sequence[int], k0: int, k1: int) -> np.ndarray:
    """Output slices k0..k1 of a label map by per-label linear interpolation and argmax (nnU-Net)."""
    return argmax_of((c, _chunk_float(_slices_of(src, c), plan, k0, k1)) for c in labels)[0]


def resample_array(arr: np.ndarray, out_shape: Sequence[int], order: Order = "linear", *,
                   anisotropic: bool = False, labels: Sequence[int] | None = None) -> np.ndarray:
    """Resample a (z, y, x) array to ``out_shape`` in the field-of-view convention.

    Images ("linear", "cubic") come back float32; labels ("nearest", "linear_per_label") keep
    their dtype (per-label: uint8; ``labels`` defaults to the values present).
    """
    arr = np.asarray(arr)
    out_shape = tuple(int(n) for n in out_shape)
    if arr.ndim != 3 or len(out_shape) != 3 or min(out_shape) < 1:
        raise KitsegError(f"cannot resample an array of shape {arr.shape} to {out_shape}")
    plan = _plan(arr.shape, out_shape, order, anisotropic)
    if order == "nearest":
        return _nearest(arr, out_shape)
    src = arr
    if order == "linear_per_label":
        labels = sorted(int(v) for v in np.unique(arr)) if labels is None else list(labels)
        if len(labels) == 1:
            return np.full(out_shape, labels[0], dtype=np.uint8)
        out = np.empty(out_shape, dtype=np.uint8)
        for k0 in range(0, out_shape[0], plan.chunk):
            k1 = min(out_shape[0], k0 + plan.chunk)
            out[k0:k1] = _label_chunk(src, plan, labels, k0, k1)
        return out
    out = np.empty(out_shape, dtype=np.float32)
    get = _slices_of(src)
    for k0 in range(0, out_shape[0], plan.chunk):
        k1 = min(out_shape[0], k0 + plan.chunk)
        _chunk_float(get, plan, k0, k1, out=out[k0:k1])
    return out


# ---------------------------------------------------------------------------------------------
# Volumes and records
# ---------------------------------------------------------------------------------------------
def resample(vol: Volume, spacing: Sequence[float | None] | None = None, shape: Sequence[int | None] | None = None,
             order: Order = "linear", *, pad_to: Sequence[int] | None = None, pad_value: float = 0.0,
             anisotropy_threshold: float = 3.0, labels: Sequence[int] | None = None) -> tuple[Volume, ResampleRecord]:
    """Resample ``vol`` to a target ``spacing`` (z, y, x mm) or ``shape`` (voxels), then pad to ``pad_to``.

    ``None`` entries keep that axis. The field of view is kept (module docstring); the exact new
    spacing is ``n_old * sp_old / n_new``. ``pad_to`` pads with ``pad_value`` (0 for labels),
    centred (TuNet 3.4). Returns the new Volume and the record that ``kitseg.stages.grid.restore`` inverts.
    """
    if (spacing is None) == (shape is None):
        raise KitsegError("resample needs exactly one of spacing= or shape=")
    if spacing is not None:
        out_shape = shape_for_spacing(vol.shape, vol.spacing, list(spacing))
    else:
        out_shape = tuple(int(n if m is None else m) for n, m in zip(vol.shape, shape))  # type: ignore[arg-type]
    new_affine = grid_affine(vol.affine, vol.shape, out_shape)
    new_spacing = tuple(float(s) for s in np.linalg.norm(new_affine[:3, :3], axis=0))
    aniso = is_anisotropic(vol.spacing, anisotropy_threshold) or is_anisotropic(new_spacing, anisotropy_threshold)
    if out_shape == vol.shape:
        arr = vol.array.astype(np.float32) if order in ("linear", "cubic") else vol.array.copy()
    else:
        arr = resample_array(vol.array, out_shape, order, anisotropic=aniso, labels=labels)
    pad = ((0, 0),) * 3
    if pad_to is not None:
        if any(p < n for p, n in zip(pad_to, out_shape)):
            raise KitsegError(f"cannot pad shape {out_shape} to the smaller {tuple(pad_to)}")
        pad = tuple(((p - n) // 2, p - n - (p - n) // 2) for p, n in zip(pad_to, out_shape))
        if any(a or b for a, b in pad):
            arr = np.pad(arr, pad, constant_values=pad_value if order in ("linear", "cubic") else 0)
    record = ResampleRecord(original_shape=vol.shape, original_affine=_affine_list(vol.affine), shape=out_shape,
                            affine=_affine_list(new_affine), pad=pad, anisotropic=aniso)
    return Volume(arr, record.padded_affine, vol.source), record


__all__ = ["ORDERS", "Order", "ResampleRecord", "grid_affine", "is_anisotropic", "resample", "resample_array",
           "shape_for_spacing"]
