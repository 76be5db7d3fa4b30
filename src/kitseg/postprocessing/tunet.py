"""TuNet's post-processing, Algorithm 1 of the TuNet paper (papers/tunet_cascaded_unets_kits19.txt,
section 3.5 "Post-processing" and Algorithm 1), on the W-Net (whole = kidney + tumor) and T-Net
(tumor) probability maps, with the L-Net mask as the final multiplier.

The pseudo-code leaves a few things open; the choices made here (all in the docstrings):

- "binarize based on T" is ``p > T`` (strictly greater, the usual ``pred > 0.5``).
- "refine X based on T and T_low" is :func:`region_grow` with seed A = the current binary map of X
  and candidate B = ``p > T_low``: every connected component of B that overlaps or touches A is
  merged into A (section 3.5: "if a segmented region was connected to the binary map, A, it was then
  merged into A").
- In the tumor branch where nothing exceeds 0.5, the map is re-binarised at 0.1 and, if still
  empty, set to the whole region; the final "refine tumor region based on T and T_tumor" then grows
  *that* map (read literally, with A = ``p_tumor > 0.5`` = empty, it would erase the result the
  previous lines just built, contradicting the text's "If the returned mask is empty, T is lowered
  to 0.1"). With seed = the current map the step changes nothing, which we accept.
- "merge whole and tumor regions to produce multi-class prediction map": 1 where whole, then 2
  where tumor (tumor wins, also outside the whole region); "multiply with the output of L-Net": every
  voxel outside the L-Net mask becomes 0.
- The 100-voxel test counts voxels at the resolution the probability maps are given in (TuNet's
  networks ran on 256 x 256 x 128 volumes, section 3.4).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from kitseg.errors import KitsegError
from kitseg.postprocessing.components import bbox, label_components

# Algorithm 1 constants (TuNet paper, section 3.5 and Algorithm 1).
T_GLOBAL = 0.5
T_WHOLE_EMPTY = 0.1  # whole region empty at 0.5: binarise at 0.1 instead
T_WHOLE_REFINE = 0.4  # otherwise: grow the 0.5 map with 0.4 components
T_TUMOR_EMPTY = 0.1  # tumor empty at 0.5
T_TUMOR_SMALL = 0.2  # tumor non-empty but below SMALL_TUMOR_VOXELS voxels
T_TUMOR_LARGE = 0.3  # any other tumor
SMALL_TUMOR_VOXELS = 100


def region_grow(seed: np.ndarray, candidate: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """Merge into ``seed`` (map A) every connected component of ``candidate`` (map B) that touches it.

    A component of B "touches" A when one of its voxels is in A or is a ``connectivity``-neighbour
    of a voxel of A. Computed as the components of A | B that contain a voxel of A (B's components
    are maximal, so they join A's only through A). Returns a new bool array (A is always kept).
    """
    seed = np.asarray(seed, dtype=bool)
    candidate = np.asarray(candidate, dtype=bool)
    if seed.shape != candidate.shape:
        raise KitsegError(f"region growing needs maps of one shape, got {seed.shape} and {candidate.shape}")
    union = seed | candidate
    out = seed.copy()
    box = bbox(union)
    if box is None or not seed.any():
        return out
    comp, sizes = label_components(union[box], connectivity)
    touched = np.zeros(sizes.size, dtype=bool)
    touched[np.unique(comp[seed[box]])] = True
    touched[0] = False
    out[box] |= touched[comp]
    return out


def tunet_algorithm1(p_whole: np.ndarray, p_tumor: np.ndarray, lnet_mask: np.ndarray | None = None, *,
                     connectivity: int = 26,
                     empty_tumor_fallback: Literal["whole", "none"] = "whole") -> np.ndarray:
    """TuNet Algorithm 1: threshold, region-grow and merge the W-Net and T-Net probability maps.

    ``p_whole``: probability of the whole region (kidney + tumor); ``p_tumor``: probability of tumor;
    ``lnet_mask``: the L-Net's coarse whole-region mask on the same grid (None: no multiplication).
    Returns uint8 labels 0 background, 1 kidney, 2 tumor.

    Whole region: ``p > 0.5``; if empty, ``p > 0.1``; else grown with the components of ``p > 0.4``.
    Tumor: ``p > 0.5``; if empty, ``p > 0.1``, and if still empty the whole region (the paper's
    "set tumor equal to whole region"; ``empty_tumor_fallback="none"`` leaves it empty instead);
    if non-empty with fewer than 100 voxels, grown with ``p > 0.2``; otherwise grown with ``p > 0.3``.
    """
    p_whole = np.asarray(p_whole, dtype=np.float32)
    p_tumor = np.asarray(p_tumor, dtype=np.float32)
    if p_whole.shape != p_tumor.shape or (lnet_mask is not None and np.shape(lnet_mask) != p_whole.shape):
        raise KitsegError("TuNet post-processing needs the whole, tumor and L-Net maps on one grid, got shapes "
                          f"{p_whole.shape}, {p_tumor.shape}, {None if lnet_mask is None else np.shape(lnet_mask)}")
    if empty_tumor_fallback not in ("whole", "none"):
        raise KitsegError(f"empty_tumor_fallback must be 'whole' or 'none', got {empty_tumor_fallback!r}")

    whole = p_whole > T_GLOBAL
    if not whole.any():
        whole = p_whole > T_WHOLE_EMPTY
    else:
        whole = region_grow(whole, p_whole > T_WHOLE_REFINE, connectivity)

    tumor = p_tumor > T_GLOBAL
    n_tumor = int(np.count_nonzero(tumor))
    if n_tumor == 0:
        tumor = p_tumor > T_TUMOR_EMPTY
        if not tumor.any() and empty_tumor_fallback == "whole":
            tumor = whole.copy()
        tumor = region_grow(tumor, p_tumor > T_TUMOR_EMPTY, connectivity)  # no-op, see module docstring
    elif n_tumor < SMALL_TUMOR_VOXELS:
        tumor = region_grow(tumor, p_tumor > T_TUMOR_SMALL, connectivity)
    else:
        tumor = region_grow(tumor, p_tumor > T_TUMOR_LARGE, connectivity)

    labels = np.zeros(p_whole.shape, dtype=np.uint8)
    labels[whole] = 1
    labels[tumor] = 2
    if lnet_mask is not None:
        labels[~np.asarray(lnet_mask, dtype=bool)] = 0
    return labels
