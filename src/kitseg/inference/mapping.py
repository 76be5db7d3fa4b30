"""Moving a stage's output between grids without ever building a full-resolution float volume.

A stage predicts on its own grid: a resampled volume, or one box per kidney (``CaseRecord``:
``crop`` + ``resample``). Three moves are needed:

- ``to_entry_grid``: a label map on the original grid -> an entry's grid, by the same crop and
  nearest-neighbour resampling that preprocessing applies to the ground truth in training (the
  "mask:<stage>" input channel, TuNet's L-Net mask);
- ``resample_to_grid``: any array on one grid -> another grid, through physical coordinates
  (SimpleITK, identity transform; "prob:<stage>" channels between two stages' entries);
- ``paste_labels``: an entry's uint8 labels -> the original grid, resampling only the box around
  its non-zero voxels (per-label linear interpolation and argmax, as nnU-Net restores
  segmentations) and writing them into the uint8 output. A box that is an exact sub-grid of the
  original (a stage that does not resample) is copied without interpolation.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from kitseg.preprocessing.records import CaseRecord
from kitseg.preprocessing.resample import resample_array


def _geometry(affine: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """SimpleITK spacing, origin, direction of a (z, y, x) -> LPS affine (as ``kitseg.io.to_sitk``)."""
    affine = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / spacing[None, :]
    return spacing[::-1].tolist(), affine[:3, 3].tolist(), direction[:, ::-1].ravel().tolist()


def _sitk(arr: np.ndarray, affine: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    spacing, origin, direction = _geometry(affine)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def shifted(affine: np.ndarray, start: Sequence[int]) -> np.ndarray:
    """The affine of a sub-array starting at voxel ``start`` (z, y, x)."""
    out = np.array(affine, dtype=float)
    out[:3, 3] = out[:3, :3] @ np.asarray(start, dtype=float) + out[:3, 3]
    return out


def same_grid(shape_a, affine_a, shape_b, affine_b, atol: float = 1e-4) -> bool:
    return tuple(shape_a) == tuple(shape_b) and bool(np.allclose(affine_a, affine_b, atol=atol))


def resample_to_grid(arr: np.ndarray, affine: np.ndarray, shape: Sequence[int], dst_affine: np.ndarray,
                     order: str = "linear", default: float = 0.0) -> np.ndarray:
    """Resample ``arr`` (on ``affine``) onto the grid ``shape``/``dst_affine`` through world coordinates.

    ``order``: "linear" (float32 out) or "nearest" (dtype kept). Points outside ``arr``'s extent
    get ``default``. Identical grids are copied.
    """
    if same_grid(arr.shape, affine, shape, dst_affine):
        return np.array(arr, dtype=np.float32 if order == "linear" else arr.dtype)
    src = arr.astype(np.float32, copy=False) if order == "linear" else arr
    if src.dtype == np.bool_:
        src = src.astype(np.uint8)
    f = sitk.ResampleImageFilter()
    spacing, origin, direction = _geometry(dst_affine)
    f.SetSize([int(n) for n in tuple(shape)[::-1]])
    f.SetOutputSpacing(spacing)
    f.SetOutputOrigin(origin)
    f.SetOutputDirection(direction)
    f.SetInterpolator(sitk.sitkLinear if order == "linear" else sitk.sitkNearestNeighbor)
    f.SetDefaultPixelValue(float(default))
    f.SetTransform(sitk.Transform())
    out = sitk.GetArrayFromImage(f.Execute(_sitk(src, affine)))
    return out.astype(arr.dtype, copy=False) if order == "nearest" and arr.dtype == np.bool_ else out


def box_on_grid(shape: Sequence[int], affine: np.ndarray, dst_shape: Sequence[int], dst_affine: np.ndarray,
                margin: int = 1) -> tuple[slice, slice, slice] | None:
    """The box of ``dst`` voxels whose centres lie inside the extent of the grid ``shape``/``affine``.

    Grown by ``margin`` voxels and clipped to ``dst_shape``; None when they do not overlap.
    """
    corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in shape])), dtype=float)
    world = corners @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    inv = np.linalg.inv(np.asarray(dst_affine, dtype=float))
    idx = world @ inv[:3, :3].T + inv[:3, 3]
    lo = np.floor(idx.min(0) + 1e-6).astype(int) - margin
    hi = np.ceil(idx.max(0) - 1e-6).astype(int) + 1 + margin
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.asarray(dst_shape))
    if (hi <= lo).any():
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def _integer_offset(affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray | None:
    """The voxel offset when ``affine``'s grid is a sub-grid of ``dst_affine``'s (same axes/spacing)."""
    rel = np.linalg.inv(np.asarray(dst_affine, dtype=float)) @ np.asarray(affine, dtype=float)
    if not np.allclose(rel[:3, :3], np.eye(3), atol=1e-5):
        return None
    off = rel[:3, 3]
    return np.rint(off).astype(int) if np.allclose(off, np.rint(off), atol=1e-3) else None


def nonzero_box(arr: np.ndarray, margin: int = 1) -> tuple[slice, slice, slice] | None:
    """Bounding box of the non-zero voxels grown by ``margin`` (clipped), or None if all zero."""
    if not arr.any():
        return None
    box = []
    for axis in range(3):
        hit = np.flatnonzero(arr.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(0, int(hit[0]) - margin), min(arr.shape[axis], int(hit[-1]) + 1 + margin)))
    return tuple(box)  # type: ignore[return-value]


def paste_labels(labels: np.ndarray, affine: np.ndarray, out: np.ndarray, out_affine: np.ndarray) -> None:
    """Write an entry's uint8 ``labels`` (grid ``affine``) into ``out`` (the original grid), in place.

    Only the box around the non-zero voxels is resampled: each label's indicator is interpolated
    linearly onto the matching box of ``out`` and the most likely label wins (background =
    1 - the sum of the others). Where entries overlap, the larger label value wins (tumor over
    kidney over background, the KiTS overlap rule).
    """
    box = nonzero_box(labels)
    if box is None:
        return
    sub = labels[box]
    sub_aff = shifted(affine, [s.start for s in box])
    offset = _integer_offset(sub_aff, out_affine)
    if offset is not None:  # a sub-grid: copy exactly
        dst, src = [], []
        for o, n, m in zip(offset, sub.shape, out.shape):
            a, b = max(0, o), min(m, o + n)
            if b <= a:
                return
            dst.append(slice(a, b))
            src.append(slice(a - o, b - o))
        region = out[tuple(dst)]
        np.maximum(region, sub[tuple(src)], out=region)
        return
    dst_box = box_on_grid(sub.shape, sub_aff, out.shape, out_affine, margin=0)
    if dst_box is None:
        return
    dst_shape = [s.stop - s.start for s in dst_box]
    dst_aff = shifted(out_affine, [s.start for s in dst_box])
    values = [int(v) for v in np.unique(sub) if v != 0]
    best_p = None
    best = np.zeros(dst_shape, dtype=np.uint8)
    total = np.zeros(dst_shape, dtype=np.float32)
    for v in values:
        p = resample_to_grid((sub == v).astype(np.float32), sub_aff, dst_shape, dst_aff, "linear", 0.0)
        total += p
        if best_p is None:
            best_p = p
            best[:] = v
        else:
            win = p > best_p
            best[win] = v
            np.maximum(best_p, p, out=best_p)
    assert best_p is not None
    best[best_p <= 1.0 - total] = 0  # background wins (ties go to background)
    region = out[dst_box]
    np.maximum(region, best, out=region)


def to_entry_grid(full: np.ndarray, record: CaseRecord, order: str = "nearest") -> np.ndarray:
    """A map on the original grid cropped and resampled onto a preprocessed entry's (padded) grid.

    The same steps as ``kitseg.preprocessing.cache.preprocess_case`` applies to a label: crop by
    ``record.crop``, resample to ``record.resample.shape``, pad with zeros by ``record.resample.pad``.
    """
    arr = full[record.crop.slices] if record.crop is not None else full
    res = record.resample
    if tuple(arr.shape) != tuple(res.shape):
        arr = resample_array(arr, res.shape, order, anisotropic=res.anisotropic)
    if any(a or b for a, b in res.pad):
        arr = np.pad(arr, res.pad)
    return np.ascontiguousarray(arr)


def unpadded(arr: np.ndarray, record: CaseRecord) -> np.ndarray:
    """The part of an entry-grid array (..., z, y, x) inside the resampled grid (padding removed)."""
    sl = tuple(slice(a, a + n) for (a, _), n in zip(record.resample.pad, record.resample.shape))
    return arr[(Ellipsis, *sl)]


__all__ = ["box_on_grid", "nonzero_box", "paste_labels", "resample_to_grid", "same_grid", "shifted",
           "to_entry_grid", "unpadded"]
