"""What counts as a tumor: the one definition that metrics.csv, the report and ``--statistics`` share.

A *tumor* is a 26-connected component of the tumor label of at least ``MIN_TUMOR_ML`` (0.1 ml, about
a 6 mm ball). Smaller pieces are not counted as tumors, on either side (ground truth or prediction),
but their voxels still count in the tumor volume. Detection (``kitseg.metrics.overlap.detection``):

- a ground-truth tumor is *found* when a predicted tumor overlaps it by at least one voxel, and
  *missed* otherwise;
- a predicted tumor that overlaps no ground-truth tumor is a *false-positive tumor*;
- a case with a ground-truth tumor is a true positive when at least one of its tumors is found, and a
  false negative when all are missed, *whatever else was predicted*: false-positive tumors elsewhere
  do not make a missed tumor count as detected.
"""

from __future__ import annotations

import numpy as np

from kitseg.postprocessing.components import label_components

MIN_TUMOR_ML = 0.1


def tumor_components(mask: np.ndarray, voxel_ml: float | None, connectivity: int = 26,
                     min_ml: float = MIN_TUMOR_ML) -> tuple[np.ndarray, np.ndarray]:
    """The tumors of a boolean mask: ``(labels, sizes)`` with the tumors numbered 1..N (raster order of
    their first voxel) and ``sizes[k]`` their voxel counts (``sizes[0]``: every other voxel).

    ``voxel_ml``: the volume of one voxel in ml (None: keep every component, for unit-less arrays).
    """
    labels, sizes = label_components(mask, connectivity)
    if voxel_ml is None or sizes.size <= 1:
        return labels, sizes
    keep = np.flatnonzero(sizes[1:] * float(voxel_ml) >= min_ml - 1e-12) + 1
    if keep.size == sizes.size - 1:
        return labels, sizes
    lut = np.zeros(sizes.size, dtype=labels.dtype)
    lut[keep] = np.arange(1, keep.size + 1, dtype=labels.dtype)
    new = lut[labels]
    kept_sizes = np.concatenate([[labels.size - int(sizes[keep].sum())], sizes[keep]])
    return new, kept_sizes
