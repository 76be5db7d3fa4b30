"""Bounding boxes and crops.

``crop`` returns the cropped Volume, whose affine places every voxel exactly where it was, and a
`CropRecord`; ``kitseg.stages.grid.paste(pred, record)`` puts a prediction made on the crop back onto the full grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cc3d
import numpy as np

from kitseg.errors import KitsegError
from kitseg.preprocessing.records import CropRecord, _affine_list
from kitseg.volume import Volume, bbox

BBox = tuple[slice, slice, slice]


def _margin_vox(spacing: Sequence[float], margin_mm: float | Sequence[float]) -> list[int]:
    m = [float(margin_mm)] * 3 if np.isscalar(margin_mm) else [float(v) for v in margin_mm]  # type: ignore[arg-type]
    if len(m) != 3 or min(m) < 0:
        raise KitsegError(f"margin must be one or three non-negative numbers of mm, got {margin_mm}")
    return [math.ceil(mm / float(sp) - 1e-6) for mm, sp in zip(m, spacing)]


def bbox_from_mask(mask: np.ndarray, spacing: Sequence[float], margin_mm: float | Sequence[float] = 0.0,
                   *, min_shape: Sequence[int] | None = None, if_empty: str = "full") -> BBox:
    """The smallest box holding every nonzero voxel of ``mask``, grown by ``margin_mm`` and clipped.

    ``margin_mm`` (one value or (z, y, x)) becomes ``ceil(margin / spacing)`` voxels per side.
    ``min_shape`` grows the box symmetrically to at least that many voxels per axis (shifted to stay
    inside the volume, clipped when the volume is smaller). An empty mask gives the whole volume
    (``if_empty="full"``, a cascade's fallback) or raises a KitsegError (``if_empty="error"``).
    """
    mask = np.asarray(mask)
    if mask.ndim != 3 or len(spacing) != 3:
        raise KitsegError(f"bbox_from_mask needs a 3D mask and 3 spacings, got {mask.shape} and {spacing}")
    shape = mask.shape
    if not mask.any():
        if if_empty == "error":
            raise KitsegError("the mask is empty: no kidney to crop around")
        return tuple(slice(0, n) for n in shape)  # type: ignore[return-value]
    margin = _margin_vox(spacing, margin_mm)
    box = []
    for axis, tight in enumerate(bbox(mask)):
        start, stop = tight.start - margin[axis], tight.stop + margin[axis]
        if min_shape is not None and stop - start < min_shape[axis]:
            grow = min_shape[axis] - (stop - start)
            start -= grow // 2
            stop += grow - grow // 2
            shift = max(0, -start) - max(0, stop - shape[axis])
            start, stop = start + shift, stop + shift
        box.append(slice(max(0, start), min(shape[axis], stop)))
    return tuple(box)  # type: ignore[return-value]


def kidney_boxes(label: np.ndarray, spacing: Sequence[float], margin_mm: float | Sequence[float] = 0.0, *,
                 kidneys: str = "both", axes: str = "zyx", min_shape: Sequence[int] | None = None,
                 tumor_label: int = 2) -> list[BBox]:
    """Crop boxes around the kidneys (label > 0) of a label map (RoiSpec semantics).

    ``kidneys``: "both" one box; "each" one box per kidney (the two largest 26-connected components,
    ordered by their first voxel); "with_tumor" the component holding the most ``tumor_label``
    voxels (the largest when none has tumor). ``axes="z"`` keeps whole slices.
    """
    label = np.asarray(label)
    fg = label > 0
    if kidneys == "both" or not fg.any():
        masks = [fg]
    else:
        outer = bbox_from_mask(fg, spacing)  # components are found inside the kidneys' box (fast)
        comps, n = cc3d.connected_components(fg[outer].view(np.uint8), connectivity=26, return_N=True)
        stats = cc3d.statistics(comps)
        sizes = np.asarray(stats["voxel_counts"][1:])
        if kidneys == "each":
            keep = sorted(np.argsort(sizes)[::-1][:2] + 1)
        elif kidneys == "with_tumor":
            tumor = np.bincount(comps[label[outer] == tumor_label], minlength=n + 1)[1:]
            keep = [int(np.argmax(tumor) + 1) if tumor.any() else int(np.argmax(sizes) + 1)]
        else:
            raise KitsegError(f"unknown kidneys mode {kidneys!r}; use both, each or with_tumor")
        masks = []
        for k in keep:
            m = np.zeros(fg.shape, dtype=bool)
            m[outer] = comps == k
            masks.append(m)
    boxes = []
    for m in masks:
        box = bbox_from_mask(m, spacing, margin_mm, min_shape=min_shape)
        if axes == "z":
            box = (box[0], slice(0, m.shape[1]), slice(0, m.shape[2]))
        boxes.append(box)
    return boxes


def label_counts(label: np.ndarray, n_values: int) -> list[int]:
    """Voxels of each value 0..n_values-1 (``np.bincount`` widens uint8 to int64: 10x slower)."""
    arr = np.asarray(label)
    counts = [int(np.count_nonzero(arr == v)) for v in range(1, n_values)]
    return [arr.size - sum(counts), *counts]


def crop(vol: Volume, bbox: Sequence[slice]) -> tuple[Volume, CropRecord]:
    """Cut ``bbox`` out of ``vol``; the crop's affine places each voxel exactly where it was."""
    bbox = _check_bbox(bbox, vol.shape)
    start = np.array([s.start for s in bbox], dtype=float)
    aff = vol.affine.copy()
    aff[:3, 3] = vol.affine[:3, :3] @ start + vol.affine[:3, 3]
    arr = np.ascontiguousarray(vol.array[bbox])
    record = CropRecord(original_shape=vol.shape, original_affine=_affine_list(vol.affine),
                        bbox=tuple((s.start, s.stop) for s in bbox))
    return Volume(arr, aff, vol.source), record


def _check_bbox(bbox: Sequence[slice], shape: Sequence[int]) -> BBox:
    if len(bbox) != 3:
        raise KitsegError(f"a crop box has 3 slices (z, y, x), got {len(bbox)}")
    out = []
    for s, n in zip(bbox, shape):
        start, stop, step = s.indices(n)
        if step != 1 or stop <= start or (s.start is not None and s.start < 0) or (s.stop is not None and s.stop > n):
            raise KitsegError(f"crop box {s} is empty, strided or outside the axis of {n} voxels")
        out.append(slice(start, stop))
    return tuple(out)  # type: ignore[return-value]


__all__ = ["BBox", "CropRecord", "bbox_from_mask", "crop", "kidney_boxes", "label_counts"]
