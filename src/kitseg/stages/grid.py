"""The one grid module: moving a stage's input and output between the CT's grid and a stage's grid.

A stage predicts on its own grid: a resampled volume, or one box per kidney (``CaseRecord``:
``crop`` + ``resample``, written by ``kitseg.preprocessing.pipeline.preprocess_case``). Every inverse
of that preprocessing lives here, on Volumes and the typed records:

- ``paste(pred, CropRecord)`` and ``restore(pred, ResampleRecord)`` / ``restore_argmax``: the exact
  inverses of ``crop`` and ``resample`` (round trips tested with their geometry);
- ``to_entry_grid``: a label map on the original grid -> an entry's grid, by the same crop and
  nearest-neighbour resampling that preprocessing applies to the ground truth in training (the
  ``mask`` input channel, TuNet's L-Net mask); ``ct_on_entry_grid``: the CT in HU likewise;
- ``resample_to_grid``: any array on one grid -> another grid, through physical coordinates
  (SimpleITK, identity transform; ``prob`` channels between two stages' entries);
- ``paste_labels``: an entry's uint8 labels -> the original grid, resampling only the box around
  its non-zero voxels (per-label linear interpolation and argmax, as nnU-Net restores
  segmentations) and writing them into the uint8 output. A box that is an exact sub-grid of the
  original (a stage that does not resample) is copied without interpolation;
- ``labels_on_ct`` / ``probabilities_on_ct``: a whole stage output back on the CT's grid.

No full-resolution float array of the whole volume is built (``probabilities_on_ct`` excepted: float16).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import numpy as np
import SimpleITK as sitk

from kitseg.errors import KitsegError
from kitseg.io import sitk_geometry, to_sitk
from kitseg.preprocessing.grid import argmax_of
from kitseg.preprocessing.records import CaseRecord, CropRecord, ResampleRecord
from kitseg.preprocessing.resample import Order, _chunk_float, _plan, _slices_of, resample_array
from kitseg.volume import Volume, bbox


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
    spacing, origin, direction = sitk_geometry(dst_affine)
    f.SetSize([int(n) for n in tuple(shape)[::-1]])
    f.SetOutputSpacing(spacing)
    f.SetOutputOrigin(origin)
    f.SetOutputDirection(direction)
    f.SetInterpolator(sitk.sitkLinear if order == "linear" else sitk.sitkNearestNeighbor)
    f.SetDefaultPixelValue(float(default))
    f.SetTransform(sitk.Transform())
    out = sitk.GetArrayFromImage(f.Execute(to_sitk(Volume(src, affine), restore_orientation=False)))
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


def paste_labels(labels: np.ndarray, affine: np.ndarray, out: np.ndarray, out_affine: np.ndarray) -> None:
    """Write an entry's uint8 ``labels`` (grid ``affine``) into ``out`` (the original grid), in place.

    Only the box around the non-zero voxels is resampled: each label's indicator is interpolated
    linearly onto the matching box of ``out`` and the most likely label wins (background =
    1 - the sum of the others). Where entries overlap, the larger label value wins (tumor over
    kidney over background, the KiTS overlap rule).
    """
    box = bbox(labels, margin=1)
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
    total = np.zeros(dst_shape, dtype=np.float32)

    def indicators():
        for v in values:
            p = resample_to_grid((sub == v).astype(np.float32), sub_aff, dst_shape, dst_aff, "linear", 0.0)
            total[...] += p
            yield v, p

    best, best_p = argmax_of(indicators())
    best[best_p <= 1.0 - total] = 0  # background wins (ties go to background)
    region = out[dst_box]
    np.maximum(region, best, out=region)


def to_entry_grid(full: np.ndarray, record: CaseRecord, order: str = "nearest") -> np.ndarray:
    """A map on the original grid cropped and resampled onto a preprocessed entry's (padded) grid.

    The same steps as ``kitseg.preprocessing.pipeline.preprocess_case`` applies to a label: crop by
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


def ct_on_entry_grid(ct: Volume, record: CaseRecord) -> np.ndarray:
    """The CT in HU on an entry's (padded) grid (the CRF's appearance term, the body's midline)."""
    arr = ct.array[record.crop.slices] if record.crop is not None else ct.array
    res = record.resample
    arr = resample_array(arr, res.shape, "linear") if tuple(arr.shape) != tuple(res.shape) else arr.astype(np.float32)
    return np.pad(arr, res.pad, mode="edge") if any(a or b for a, b in res.pad) else arr


def labels_on_ct(entries: Sequence[tuple[CaseRecord, np.ndarray]], ct: Volume) -> Volume:
    """The uint8 labels of a stage's entries (record, labels on its grid) pasted onto the CT's grid."""
    out = np.zeros(ct.shape, dtype=np.uint8)
    for record, labels in entries:
        paste_labels(unpadded(labels, record), record.resample.affine, out, ct.affine)
    return ct.with_array(out)


def probabilities_on_ct(entries: Sequence[tuple[CaseRecord, np.ndarray]], softmax: bool, ct: Volume,
                        dtype=np.float16) -> np.ndarray:
    """A stage's probabilities (K, *ct.shape) on the CT's grid; outside its boxes: background.

    Each channel of each entry (record, probabilities on its grid) is resampled (linear) onto the
    part of the CT's grid that the entry covers; the result is the only full-size array (float16).
    """
    shape, affine = ct.shape, ct.affine
    k = entries[0][1].shape[0]
    out = np.zeros((k, *shape), dtype=dtype)
    if softmax:
        out[0] = 1
    for rec, entry_probs in entries:
        probs = unpadded(entry_probs, rec)
        box = box_on_grid(probs.shape[1:], rec.resample.affine, shape, affine, margin=0)
        if box is None:
            continue
        dst_shape = [s.stop - s.start for s in box]
        dst_aff = shifted(affine, [s.start for s in box])
        inside = resample_to_grid(np.ones(probs.shape[1:], np.float32), rec.resample.affine, dst_shape, dst_aff,
                                  "nearest", 0.0) > 0
        for c in range(k):
            p = resample_to_grid(probs[c], rec.resample.affine, dst_shape, dst_aff, "linear", 0.0)
            region = out[(c, *box)]
            region[inside] = p[inside]
    return out


# ---------------------------------------------------------------------------------------------
# The exact inverses of crop and resample (kitseg.preprocessing.crop / .resample)
# ---------------------------------------------------------------------------------------------
def paste(pred: np.ndarray | Volume, record: CropRecord, fill: float = 0) -> np.ndarray:
    """Put a prediction made on a crop back onto the original full grid (exact inverse of ``crop``).

    ``pred`` is (z, y, x) or (C, z, y, x) with the crop's shape; outside the box the result is
    ``fill``. The dtype is kept.
    """
    arr = pred.array if isinstance(pred, Volume) else np.asarray(pred)
    if tuple(arr.shape[-3:]) != record.shape:
        raise KitsegError(f"prediction shape {arr.shape} does not match the crop's {record.shape}")
    out = np.full(arr.shape[:-3] + tuple(record.original_shape), fill, dtype=arr.dtype)
    out[(Ellipsis, *record.slices)] = arr
    return out


def _unpad(arr: np.ndarray, record: ResampleRecord) -> np.ndarray:
    shape = tuple(arr.shape[-3:])
    if shape == record.padded_shape:
        sl = tuple(slice(a, a + n) for (a, _), n in zip(record.pad, record.shape))
        return arr[(Ellipsis, *sl)]
    if shape == record.shape:
        return arr
    raise KitsegError(f"array of shape {arr.shape} does not match the resampled grid {record.padded_shape}")


def restore(arr_or_vol: np.ndarray | Volume, record: ResampleRecord, order: Order = "linear", *,
            labels: Sequence[int] | None = None, dtype=None) -> Volume | np.ndarray:
    """Bring a prediction on the resampled grid back to the original grid exactly (shape and affine).

    ``arr_or_vol``: a (z, y, x) Volume/array -> a Volume with ``record.original_affine``; a
    (C, z, y, x) probability array -> an array (C, *original_shape), one channel at a time
    (``dtype=np.float16`` halves its memory). Use "nearest"/"linear_per_label" for label maps and
    `restore_argmax` to get labels from probabilities without the full-size float maps.
    """
    source = arr_or_vol.source if isinstance(arr_or_vol, Volume) else None
    arr = _unpad(arr_or_vol.array if isinstance(arr_or_vol, Volume) else np.asarray(arr_or_vol), record)
    target = tuple(record.original_shape)
    affine = np.array(record.original_affine)
    if arr.ndim == 3:
        res = arr.copy() if arr.shape == target else resample_array(
            arr, target, order, anisotropic=record.anisotropic, labels=labels)
        return Volume(res if dtype is None else res.astype(dtype, copy=False), affine, source)
    if arr.ndim != 4:
        raise KitsegError(f"restore takes (z, y, x) or (C, z, y, x) arrays, got shape {arr.shape}")
    out = np.empty((arr.shape[0],) + target, dtype=dtype or (np.float32 if order in ("linear", "cubic")
                                                             else arr.dtype))
    for c in range(arr.shape[0]):
        out[c] = arr[c] if arr.shape[1:] == target else resample_array(
            arr[c], target, order, anisotropic=record.anisotropic, labels=labels)
    return out


def restore_argmax(probs: np.ndarray, record: ResampleRecord, order: Literal["linear", "cubic"] = "linear",
                   values: Sequence[int] | None = None) -> np.ndarray:
    """Labels on the original grid from (C, z, y, x) probabilities, one chunk of slices at a time.

    Each channel is interpolated to the original grid and the argmax taken per chunk, so memory
    stays at the uint8 output plus a few chunks (the full-size float maps are never built).
    ``values[c]`` is the label written for channel c (default c).
    """
    probs = _unpad(np.asarray(probs), record)
    if probs.ndim != 4:
        raise KitsegError(f"restore_argmax takes (C, z, y, x) probabilities, got shape {probs.shape}")
    values = list(range(probs.shape[0])) if values is None else list(values)
    target = tuple(record.original_shape)
    plan = _plan(probs.shape[1:], target, order, record.anisotropic)
    srcs = [_slices_of(probs[c]) for c in range(probs.shape[0])]
    out = np.empty(target, dtype=np.uint8)
    for k0 in range(0, target[0], plan.chunk):
        k1 = min(target[0], k0 + plan.chunk)
        out[k0:k1] = argmax_of((values[c], _chunk_float(src, plan, k0, k1)) for c, src in enumerate(srcs))[0]
    return out


__all__ = ["box_on_grid", "ct_on_entry_grid", "labels_on_ct", "paste", "paste_labels", "probabilities_on_ct",
           "resample_to_grid", "restore", "restore_argmax", "same_grid", "shifted", "to_entry_grid", "unpadded"]
