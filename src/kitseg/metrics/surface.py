"""Surface metrics in millimetres: Surface Dice at a tolerance, HD95 and mean surface distance.

- Surface Dice (Nikolov et al., DeepMind ``surface-distance``; the KiTS21/23 metric): a surface is
  made of surface elements ("surfels") on the voxel-corner grid, one per 2x2x2 neighbourhood that is
  neither all inside nor all outside, each with an area from the neighbourhood-code table (MONAI's
  ``create_table_neighbour_code_to_surface_area``, derived from DeepMind's). Surface Dice at tolerance
  tau = (area of GT surfels within tau of the predicted surface + area of predicted surfels within tau
  of the GT surface) / (total GT area + total predicted area); "within" is ``distance <= tau``.
  Tests check it against DeepMind's code and MONAI's ``compute_surface_dice(use_subvoxels=True)``.
- HD95 and MSD follow MONAI's ``compute_hausdorff_distance(percentile=95)`` and
  ``compute_average_surface_distance(symmetric=True)``: the surface of a mask is its voxels with a
  6-neighbour outside it (``mask & ~binary_erosion(mask)``; outside the image counts as outside);
  d(P->G) are Euclidean distances in mm from each surface voxel centre of P to the nearest one of G.
  HD95 = max(q95(d(P->G)), q95(d(G->P))) (linear interpolation between order statistics); MSD = the
  mean of d(P->G) and d(G->P) pooled. Both are undefined (None) when either mask is empty.
- Empty sets (KiTS21/23): both empty -> Dice = Surface Dice = 1; exactly one empty -> 0.

Speed: surfaces are local, so each mask is cut into clusters of 8^3-voxel blocks (26-connected on the
coarse block grid, so clusters are at least 9 voxels apart) and every cluster is processed in its own
small crop; nearest distances come from k-d trees over the surface points. The cost follows the size
of the surfaces, not of the scan or of the box around a far-away false positive.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from kitseg.errors import KitsegError
from kitseg.metrics.overlap import dice, in_labels
from kitseg.volume import bbox

# KiTS tolerances in mm per hierarchical evaluation class (kits21/kits23 evaluation configuration).
KITS_TOLERANCES_MM: dict[str, dict[str, float]] = {
    "kits21": {"kidney_and_mass": 2.1781, "mass": 1.3930, "tumor": 1.5363},
    "kits23": {"kidney_and_mass": 1.0330772532390826, "mass": 1.1328796488598762, "tumor": 1.1498198361434828},
}
# Our region names (DatasetSpec.regions) -> the KiTS class whose tolerance applies. KiTS19's "kidney"
# region (labels 1, 2) is the KiTS21/23 kidney_and_mass class without cysts.
REGION_TO_KITS_CLASS = {"kidney_and_masses": "kidney_and_mass", "kidney_and_mass": "kidney_and_mass",
                        "kidney": "kidney_and_mass", "masses": "mass", "mass": "mass", "tumor": "tumor"}
BLOCK = 8


def kits_tolerances(region_names: Sequence[str], challenge: str = "kits23") -> dict[str, float]:
    """Surface Dice tolerances (mm) for our region names, from the KiTS21 or KiTS23 evaluation."""
    if challenge not in KITS_TOLERANCES_MM:
        raise KitsegError(f"unknown tolerance set {challenge!r}; use one of {', '.join(KITS_TOLERANCES_MM)}")
    table = KITS_TOLERANCES_MM[challenge]
    return {r: table[REGION_TO_KITS_CLASS[r]] for r in region_names if r in REGION_TO_KITS_CLASS}


@functools.lru_cache(maxsize=16)
def _area_table(spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(area in mm^2 of each of the 256 neighbourhood codes, the 2x2x2 code weights)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from monai.metrics.utils import create_table_neighbour_code_to_surface_area
    areas, kernel = create_table_neighbour_code_to_surface_area(spacing)
    return areas.cpu().numpy().astype(np.float64), kernel.cpu().numpy().reshape(2, 2, 2).astype(np.int64)


def _clusters(mask: np.ndarray) -> Iterator[tuple[tuple[int, int, int], np.ndarray]]:
    """Yield (offset, crop) for each cluster of ``mask``: the crop holds only that cluster's voxels, padded
    with one voxel of background on every side; ``offset`` is the global index of crop voxel (0, 0, 0)."""
    coarse = np.zeros([-(-s // BLOCK) for s in mask.shape], dtype=bool)
    coarse[tuple(i // BLOCK for i in np.unravel_index(np.flatnonzero(mask), mask.shape))] = True
    labels, n = cc3d.connected_components(coarse, connectivity=26, return_N=True)
    boxes = cc3d.statistics(labels)["bounding_boxes"]
    for k in range(1, n + 1):
        cbox = tuple(slice(s.start, s.stop) for s in boxes[k])
        own = labels[cbox] == k  # another cluster may reach into this one's box
        vox = tuple(slice(s.start * BLOCK, min(s.stop * BLOCK, dim)) for s, dim in zip(cbox, mask.shape))
        restrict = own.repeat(BLOCK, 0).repeat(BLOCK, 1).repeat(BLOCK, 2)
        restrict = restrict[tuple(slice(0, v.stop - v.start) for v in vox)]
        crop = mask[vox] & restrict
        tight = bbox(crop)
        crop = np.pad(crop[tight], 1)
        yield tuple(v.start + t.start - 1 for v, t in zip(vox, tight)), crop


@dataclass(frozen=True)
class Surface:
    """A mask's surface in mm: voxel-surface centres (HD95/MSD) and surfels with their areas (Surface Dice)."""

    voxels_mm: np.ndarray  # (N, 3)
    surfels_mm: np.ndarray  # (M, 3), on the voxel-corner grid
    areas_mm2: np.ndarray  # (M,)

    @property
    def empty(self) -> bool:
        return self.voxels_mm.shape[0] == 0


def extract_surface(mask: np.ndarray, spacing: Sequence[float], surfels: bool = True) -> Surface:
    """Surface of a 3D boolean mask (outside the array counts as background)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise KitsegError(f"surface metrics need 3D masks, got shape {mask.shape}")
    sp = np.asarray(spacing, dtype=float)
    voxels, corners, areas = [], [], []
    table, kernel = _area_table(tuple(float(s) for s in sp)) if surfels else (None, None)
    for offset, crop in _clusters(mask):
        off = np.asarray(offset, dtype=float)
        edges = crop & ~ndimage.binary_erosion(crop, border_value=0)
        voxels.append((np.argwhere(edges) + off) * sp)
        if surfels:
            n = tuple(s - 1 for s in crop.shape)
            code = np.zeros(n, dtype=np.int64)
            for dz, dy, dx in np.ndindex(2, 2, 2):
                code += kernel[dz, dy, dx] * crop[dz:dz + n[0], dy:dy + n[1], dx:dx + n[2]]
            on = (code != 0) & (code != 255)
            corners.append((np.argwhere(on) + off + 0.5) * sp)
            areas.append(table[code[on]])
    return Surface(_cat(voxels, (0, 3)), _cat(corners, (0, 3)), _cat(areas, (0,)))


def _cat(parts: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty_shape)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise KitsegError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    return pred, gt


def _nearest(points: np.ndarray, to: np.ndarray, upper_bound: float = np.inf) -> np.ndarray:
    """Distance from each point to the nearest of ``to`` (inf where it exceeds ``upper_bound``: much faster)."""
    return cKDTree(to, balanced_tree=False).query(points, k=1, distance_upper_bound=upper_bound)[0]


def _hd95_msd(p: Surface, g: Surface) -> tuple[float | None, float | None]:
    if p.empty or g.empty:
        return None, None
    d_pg, d_gp = _nearest(p.voxels_mm, g.voxels_mm), _nearest(g.voxels_mm, p.voxels_mm)
    hd95 = max(float(np.percentile(d_pg, 95)), float(np.percentile(d_gp, 95)))
    return hd95, float(np.concatenate([d_pg, d_gp]).mean())


def _surface_dice(p: Surface, g: Surface, tolerance_mm: float) -> float:
    if p.empty and g.empty:
        return 1.0
    if p.empty or g.empty:
        return 0.0
    bound = tolerance_mm + 1e-6  # only "within the tolerance or not" matters
    d_pg, d_gp = _nearest(p.surfels_mm, g.surfels_mm, bound), _nearest(g.surfels_mm, p.surfels_mm, bound)
    overlap = p.areas_mm2[d_pg <= tolerance_mm].sum() + g.areas_mm2[d_gp <= tolerance_mm].sum()
    return float(overlap / (p.areas_mm2.sum() + g.areas_mm2.sum()))


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances in mm between surface voxel centres: (pred -> nearest gt, gt -> nearest pred)."""
    pred, gt = _check_pair(pred, gt)
    p, g = extract_surface(pred, spacing, False), extract_surface(gt, spacing, False)
    if p.empty or g.empty:
        raise KitsegError("surface distances need two non-empty masks")
    return _nearest(p.voxels_mm, g.voxels_mm), _nearest(g.voxels_mm, p.voxels_mm)


def hd95_msd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> tuple[float | None, float | None]:
    """(HD95, mean symmetric surface distance) in mm; (None, None) when either mask is empty."""
    pred, gt = _check_pair(pred, gt)
    return _hd95_msd(extract_surface(pred, spacing, False), extract_surface(gt, spacing, False))


def surface_dice(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> float:
    """Surface Dice at ``tolerance_mm`` (DeepMind definition, KiTS21/23 empty-set convention)."""
    pred, gt = _check_pair(pred, gt)
    return _surface_dice(extract_surface(pred, spacing), extract_surface(gt, spacing), tolerance_mm)


def region_scores(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], regions: Mapping[str, Sequence[int]],
                  tolerances: Mapping[str, float] | None = None,
                  distances: bool = True) -> dict[str, dict[str, float | None]]:
    """Dice, Surface Dice, HD95 and MSD (mm) of each region, e.g. KiTS23's kidney_and_masses {1,2,3},
    masses {2,3}, tumor {2}.

    ``tolerances`` maps region name -> Surface Dice tolerance in mm (a region without one gets
    ``surface_dice`` None); ``distances=False`` skips HD95/MSD (None).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise KitsegError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    tolerances = tolerances or {}
    if all(0 not in labels for labels in regions.values()):
        box = bbox((pred > 0) | (gt > 0), margin=1)  # exact: every region lies inside the foreground
        if box is not None:
            pred, gt = pred[box], gt[box]
    out: dict[str, dict[str, float | None]] = {}
    for name, labels in regions.items():
        p, g = in_labels(pred, labels), in_labels(gt, labels)
        tol = tolerances.get(name)
        need = distances or tol is not None
        sp, sg = (extract_surface(p, spacing, tol is not None), extract_surface(g, spacing, tol is not None)) \
            if need else (None, None)
        hd95, msd = _hd95_msd(sp, sg) if distances else (None, None)
        out[name] = {"dice": dice(p, g), "surface_dice": None if tol is None else _surface_dice(sp, sg, tol),
                     "hd95_mm": hd95, "msd_mm": msd}
    return out
