"""Connected-component post-processing of label maps (pure functions, uint8 in, uint8 out).

Paper sources:
- Zhang et al. 2019, section 2.4: "no more than two kidneys exist in the abdomen": stage 1 keeps the
  two largest connected components, stage 2 keeps the largest one.
- 3D FCN-PPM paper (papers/fcn3d_pyramid_pooling_renal_ct.txt), section II.B: connected-component
  analysis with 18-connectivity in 3D on the voxels classified as kidney or tumor; only the largest
  component is kept, which removes "isolated misclassified voxels without the connection to the region of kidney".
- TuNet paper (papers/tunet_cascaded_unets_kits19.txt), section 3.2: 3 x 3 x 3 median filtering.

Labelling uses connected-components-3d (``cc3d``), which handles 6/18/26-connectivity and is several
times faster than ``scipy.ndimage.label`` on CT-sized volumes; every function first crops to the
bounding box of the foreground, so the cost follows the size of the kidneys, not of the scan.
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import numpy as np
from scipy import ndimage

from kitseg.errors import KitsegError
from kitseg.volume import bbox

CONNECTIVITIES = (6, 18, 26)


def _check_connectivity(connectivity: int) -> None:
    if connectivity not in CONNECTIVITIES:
        raise KitsegError(f"connectivity must be 6, 18 or 26 (3D face/edge/corner neighbours), got {connectivity}")


def label_components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, np.ndarray]:
    """Label the connected components of a boolean mask (any shape that cc3d takes).

    Returns ``(labels, sizes)``: labels numbered 1..N in raster-scan order of their first voxel
    (the order ``scipy.ndimage.label`` uses too), and ``sizes[k]`` = voxel count of component k
    (``sizes[0]`` is the background count).
    """
    _check_connectivity(connectivity)
    mask = np.ascontiguousarray(mask, dtype=bool)
    labels, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True, binary_image=True)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    return labels, sizes


def _largest_ids(sizes: np.ndarray, n: int) -> np.ndarray:
    """Ids of the ``n`` largest components; ties go to the component met first in raster order."""
    order = np.argsort(-sizes[1:], kind="stable") + 1
    return order[:n]


def keep_largest_components(mask: np.ndarray, n: int, connectivity: int = 26) -> np.ndarray:
    """Keep the ``n`` largest connected components of ``mask`` (bool/uint8: non-zero = foreground).

    Zhang et al. 2019 section 2.4: n = 2 after the kidney-localisation stage, n = 1 after the
    kidney/tumor stage. Components of equal size are ranked by the raster-scan position of their
    first voxel (deterministic). Returns a new bool array of the same shape.
    """
    if n < 1:
        raise KitsegError(f"the number of components to keep must be >= 1, got {n}")
    mask = np.asarray(mask)
    out = np.zeros(mask.shape, dtype=bool)
    box = bbox(mask)
    if box is None:
        return out
    labels, sizes = label_components(mask[box] != 0, connectivity)
    keep = np.zeros(sizes.size, dtype=bool)
    keep[_largest_ids(sizes, n)] = True
    out[box] = keep[labels]
    return out


def filter_components_multiclass(labels: np.ndarray, n: int, connectivity: int = 26,
                                 foreground: Sequence[int] = (1, 2)) -> np.ndarray:
    """Keep the ``n`` largest components of the union of the ``foreground`` labels; zero the rest.

    Components are computed on ``np.isin(labels, foreground)`` (kidney and tumor together, as in
    3D FCN-PPM section II.B, which uses 18-connectivity); every foreground voxel (tumor included)
    outside the kept components becomes background. Labels not in ``foreground`` are left as they are.
    """
    labels = np.asarray(labels)
    fg = np.isin(labels, np.asarray(foreground, dtype=labels.dtype))
    kept = keep_largest_components(fg, n, connectivity)
    out = labels.copy()
    out[fg & ~kept] = 0
    return out


def tumor_inside_kidney(labels: np.ndarray, kidney: int = 1, tumor: int = 2, connectivity: int = 26) -> np.ndarray:
    """Remove tumor that is not attached to kidney.

    Definition: a tumor voxel is kept iff the connected component (at ``connectivity``) of the
    kidney-or-tumor region ``labels in {kidney, tumor}`` that contains it also contains at least one
    kidney voxel. Tumor in components without any kidney voxel ("floating" tumor) becomes
    background; kidney voxels and other labels are unchanged. This encodes the anatomical prior
    of 3D FCN-PPM section II.B ("voxels classified as renal tumor and kidney are connected together")
    and of TuNet's cascade (the tumor is a sub-volume of the kidney + tumor region).
    """
    labels = np.asarray(labels)
    out = labels.copy()
    region = (labels == kidney) | (labels == tumor)
    box = bbox(region)
    if box is None:
        return out
    comp, sizes = label_components(region[box], connectivity)
    has_kidney = np.zeros(sizes.size, dtype=bool)
    has_kidney[np.unique(comp[labels[box] == kidney])] = True
    has_kidney[0] = True  # background stays as it is
    sub = out[box]
    sub[(sub == tumor) & ~has_kidney[comp]] = 0
    return out


def median_filter3(array: np.ndarray) -> np.ndarray:
    """3 x 3 x 3 median filter (edges: nearest value), for CT images, probability maps or label maps.

    TuNet section 3.2 denoises the CT with it. On a nested label map (0 background < 1 kidney < 2
    tumor) the median equals a 27-voxel majority vote applied to each nested region (kidney+tumor
    = labels >= 1, tumor = labels >= 2), because the median of ordinal values commutes with
    thresholding; do not use it on label maps whose values are not nested (KiTS23 cyst = 3).
    Only voxels within two voxels of a non-zero value can change, so the filter runs on that
    bounding box (exact, and fast for label maps).
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise KitsegError(f"median_filter3 expects a 3D array, got shape {array.shape}")
    out = np.zeros_like(array)
    box = bbox(array != 0, margin=2)
    if box is None:
        return out
    out[box] = ndimage.median_filter(array[box], size=3, mode="nearest")
    return out


def kidneys_by_side(labels: np.ndarray, ct_hu: np.ndarray, affine: np.ndarray, min_ml: float = 10.0,
                    max_ml: float | None = None, max_anterior_mm: float = 25.0, large_ml: float = 500.0,
                    large_max_anterior_mm: float = 45.0, body_hu: float = -500.0, connectivity: int = 26,
                    foreground: Sequence[int] = (1, 2)) -> np.ndarray:
    """Keep at most one kidney per side of the body's midline, chosen by anatomy (kitseg's reading
    of Zhang et al. 2.4's "no more than two kidneys exist in the abdomen").

    ``labels``: a label map on a grid whose voxel -> LPS-millimetre map is ``affine`` (4x4, (z, y, x)
    indices); ``ct_hu``: the CT in HU on the same grid, which gives the body (voxels above
    ``body_hu``), its midline (the median left-right coordinate of the body) and its centre front to
    back. A component of the ``foreground`` labels is a candidate when it holds ``min_ml`` to
    ``max_ml`` millilitres and its centre lies no more than ``max_anterior_mm`` in front of the body's
    centre (the kidneys are retroperitoneal; bowel and most of the liver lie in front), or up to
    ``large_max_anterior_mm`` when it holds more than ``large_ml``: a kidney holding a tumor of over a
    litre reaches far forward. On the 120 training masks of the phantom benchmark, the kidneys' centres
    lie up to 31 mm in front of the body's centre, those further than 18 mm all holding more than
    1.2 l, while the localizer's false positives in front of the 25 mm line held 24 to 96 ml (its
    validation phantoms and a quarter of its training ones); without the allowance a validation
    kidney with a 1.1 l tumor (767 ml found by stage 1, centre 28 mm in front) was dropped. Each side
    keeps its largest candidate, so a large false positive on one side cannot take the place of the
    kidney on the other, as it can under "the two largest components". A component whose centre lies
    on the midline (a horseshoe kidney) counts for the side its centre leans to. Returns a new map.
    """
    labels = np.asarray(labels)
    fg = np.isin(labels, np.asarray(foreground, dtype=labels.dtype))
    out = labels.copy()
    box = bbox(fg)
    if box is None:
        return out
    affine = np.asarray(affine, dtype=float)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    body = np.asarray(ct_hu) > body_hu
    if not body.any():
        body = np.ones(labels.shape, bool)
    # left-right (LPS x) coordinate of every index along each axis: x = affine[0, :3] . (z, y, x) + t
    body_idx = np.argwhere(body[:: 2, :: 2, :: 2]) * 2
    midline = float(np.median(_world(body_idx, affine, 0)))
    body_y = float(np.median(_world(body_idx, affine, 1)))
    comp, sizes = label_components(fg[box], connectivity)
    z, y, x = np.meshgrid(*[np.arange(s.start, s.stop, dtype=float) for s in box], indexing="ij", sparse=True)
    centre = []
    for row in (0, 1):  # LPS x (left) and y (posterior) of each component's centre
        world = affine[row, 0] * z + affine[row, 1] * y + affine[row, 2] * x + affine[row, 3]
        centre.append(np.bincount(comp.ravel(), weights=np.broadcast_to(world, comp.shape).ravel(),
                                  minlength=sizes.size) / np.maximum(sizes, 1))
    centre_x, centre_y = centre
    best: dict[int, tuple[int, int]] = {}  # side (-1 right, +1 left) -> (size, component id)
    for cid in range(1, sizes.size):
        ml = sizes[cid] * voxel_ml
        ahead = large_max_anterior_mm if ml > large_ml else max_anterior_mm
        if ml < min_ml or (max_ml is not None and ml > max_ml) or centre_y[cid] < body_y - ahead:
            continue
        side = 1 if centre_x[cid] >= midline else -1
        if side not in best or sizes[cid] > best[side][0]:
            best[side] = (int(sizes[cid]), int(cid))
    keep = np.zeros(sizes.size, dtype=bool)
    for _, cid in best.values():
        keep[cid] = True
    sub = out[box]
    sub[fg[box] & ~keep[comp]] = 0
    return out


def drop_small_tumors(labels: np.ndarray, voxel_ml: float, min_ml: float = 0.0, min_fraction: float = 0.0,
                      kidney: int = 1, tumor: int = 2, connectivity: int = 26) -> np.ndarray:
    """Tumor components (at ``connectivity``) smaller than ``min_ml`` millilitres, or than ``min_fraction``
    of the case's largest tumor component, become kidney (kitseg's post-processing, not a paper's).

    Most kidney-tumor cases hold one tumor; specks of "tumor" inside the kidney are the commonest false
    positives of a briefly trained network. Run on the whole case (``final.postprocess``), so the
    largest component is the case's, not one kidney box's. Other labels are unchanged.
    """
    labels = np.asarray(labels)
    out = labels.copy()
    box = bbox(labels == tumor)
    if box is None:
        return out
    comp, sizes = label_components(labels[box] == tumor, connectivity)
    ml = sizes * float(voxel_ml)
    ml[0] = 0.0
    small = (ml < min_ml) | (ml < min_fraction * ml.max())
    small[0] = False
    sub = out[box]
    sub[small[comp]] = kidney
    return out


def _world(indices: np.ndarray, affine: np.ndarray, row: int) -> np.ndarray:
    """One LPS coordinate in mm (row 0: x, to the patient's left; 1: y, posterior) of (N, 3) voxel indices."""
    return indices @ affine[row, :3] + affine[row, 3]
