"""Per-case statistics of a label map: what a clinician asks first (how big, which side, where).

``case_statistics(labels, image=None)`` returns a typed :class:`CaseStatistics`, which
``kitseg predict --statistics`` writes as ``<case>.json`` beside each label file:

- kidney volume per side of the patient (kidney including its masses, and without them);
- the tumors (``kitseg.metrics.tumors``: 26-connected pieces of at least 0.1 ml, the definition of
  ``metrics.csv`` and the report), largest first, each with its volume, largest 3D diameter, side,
  pole (upper / middle / lower third of its kidney), exophytic fraction and growth pattern;
- the cyst volume (KiTS21/23 labels);
- for each tumor the R, E and L parts of the RENAL nephrometry score (Kutikov and Uzzo, J Urol 2009),
  as **automatic approximations** (see below). N (nearness to the collecting system) and A
  (anterior/posterior) are not given: the label maps have no collecting system.

Definitions (docs/EVALUATION.md repeats them):

- Side: canonical arrays have x pointing to the patient's left. The midline is the body's x centroid
  when the CT is given (``body_midline_x``), else the image centre. A tumor gets
  the side of its centroid; *its kidney* is the kidney tissue (label 1) on that side.
- Pole: the kidney's craniocaudal extent (patient z, mm) is cut into thirds; a tumor's pole is the
  third holding its centroid. The thirds stand in for RENAL's polar lines, which are drawn at the
  renal sinus (not segmented).
- Exophytic fraction: the fraction of the tumor's voxel centres outside the convex hull of its
  kidney's voxel centres. Growth: "exophytic" (>= 0.5), "partly exophytic" (> ``ENDOPHYTIC_MAX``),
  "endophytic" (at most ``ENDOPHYTIC_MAX``: voxel-level slack on the hull's border).
- RENAL R: largest diameter <= 40 mm: 1, < 70 mm: 2, else 3 (a 3D diameter; the score uses the
  largest axial/coronal diameter). E: exophytic 1, partly exophytic 2, endophytic 3. L: entirely
  above the upper or below the lower third line 1; crossing a line 2; more than half between the lines,
  or crossing the kidney's axial midline, 3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import ndimage
from scipy.spatial import ConvexHull, Delaunay, QhullError

from kitseg import __version__
from kitseg.datasets import KITS19, DatasetSpec
from kitseg.io import VolumeLike, read_label, read_volume
from kitseg.metrics.tumors import MIN_TUMOR_ML, tumor_components
from kitseg.volume import CANONICAL_CODES, Volume, bbox, reorient

SCHEMA_VERSION = 1
BODY_HU = -500.0  # CT above this is body (``body_midline_x``)
ENDOPHYTIC_MAX = 0.02  # exophytic fraction up to which a tumor counts as entirely endophytic
RENAL_NOTE = ("automatic approximations of the RENAL nephrometry score's R, E and L parts from the label map: "
              "R from the largest 3D diameter, E from the fraction outside the kidney's convex hull, L from thirds "
              "of the kidney's craniocaudal extent instead of polar lines at the renal sinus; N and A are not "
              "computed. Check them on the images before any clinical use.")

Side = Literal["right", "left"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RenalParts(_Strict):
    """The R, E and L parts of the RENAL score (1-3 points each), automatic approximations."""

    R: int
    E: int | None  # None: no kidney tissue on the tumor's side
    L: int | None


class TumorStatistics(_Strict):
    volume_ml: float
    max_diameter_mm: float  # largest 3D distance between two voxel centres (max Feret diameter)
    side: Side  # the patient's
    pole: Literal["upper", "middle", "lower"] | None  # third of its kidney holding the centroid
    exophytic_fraction: float | None  # of the tumor outside its kidney's convex hull
    growth: Literal["exophytic", "partly exophytic", "endophytic"] | None
    centroid_mm: tuple[float, float, float]  # patient LPS (x, y, z), as ITK and DICOM give positions
    renal: RenalParts


class CaseStatistics(_Strict):
    """Contents of ``<case>.json``. Volumes in ml, lengths in mm; sides are the patient's."""

    schema_version: int = SCHEMA_VERSION
    kitseg_version: str = __version__
    case_id: str
    label_set: str
    spacing_mm: tuple[float, float, float]  # (z, y, x)
    midline: Literal["body", "image centre"]
    kidney_ml: dict[Side, float]  # kidney including tumors and cysts, per side
    kidney_tissue_ml: dict[Side, float]  # kidney label only (without tumors and cysts)
    tumor_ml: float  # every tumor voxel, pieces under the tumor minimum included
    tumor_count: int
    tumors: list[TumorStatistics]  # largest first
    cyst_ml: float | None = None  # KiTS21/23 labels only
    min_tumor_ml: float = MIN_TUMOR_ML
    renal_note: str = RENAL_NOTE


def max_feret_diameter_mm(mask: np.ndarray, vol: Volume, offset: tuple[int, int, int] = (0, 0, 0)) -> float:
    """Largest distance (mm) between two surface-voxel centres of ``mask`` (0.0 for a single voxel).

    ``mask`` may be a crop of ``vol``'s grid starting at index ``offset``.
    """
    box = bbox(mask, margin=1)
    if box is None:
        return 0.0
    sub = np.asarray(mask[box], dtype=bool)
    edges = sub & ~ndimage.binary_erosion(sub, border_value=0)
    idx = np.argwhere(edges) + np.array([s.start for s in box]) + np.asarray(offset)
    pts = np.atleast_2d(vol.index_to_world(idx))
    if len(pts) < 2:
        return 0.0
    try:
        pts = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):  # flat or tiny: all points lie in a plane or a line
        pass
    best = 0.0
    for i in range(0, len(pts), 2048):
        d = np.linalg.norm(pts[i:i + 2048, None, :] - pts[None, :, :], axis=-1)
        best = max(best, float(d.max()))
    return best


def body_midline_x(labels: np.ndarray, image: np.ndarray | None = None) -> float:
    """x index of the body midline: body centroid on the slices with foreground, else the image centre."""
    centre = (labels.shape[2] - 1) / 2.0
    if image is None:
        return centre
    zs = np.flatnonzero(np.any(labels > 0, axis=(1, 2)))
    body = image[zs[0]:zs[-1] + 1] > BODY_HU if zs.size else image > BODY_HU
    columns = np.count_nonzero(body, axis=(0, 1))
    if columns.sum() == 0:
        return centre
    return float((columns * np.arange(columns.size)).sum() / columns.sum())


def renal_r(diameter_mm: float) -> int:
    return 1 if diameter_mm <= 40.0 else (2 if diameter_mm < 70.0 else 3)


def renal_e(exophytic_fraction: float) -> int:
    return 1 if exophytic_fraction >= 0.5 else (2 if exophytic_fraction > ENDOPHYTIC_MAX else 3)


def renal_l(tumor_z: np.ndarray, kidney_lo: float, kidney_hi: float) -> int:
    """L from the tumor voxels' craniocaudal positions and its kidney's extent (mm, patient z)."""
    third = (kidney_hi - kidney_lo) / 3.0
    lower, upper, mid = kidney_lo + third, kidney_hi - third, (kidney_lo + kidney_hi) / 2.0
    between = float(np.mean((tumor_z >= lower) & (tumor_z <= upper)))
    if between == 0.0:
        return 1
    if between > 0.5 or tumor_z.min() < mid < tumor_z.max():
        return 3
    return 2


def _growth(fraction: float) -> Literal["exophytic", "partly exophytic", "endophytic"]:
    return "exophytic" if fraction >= 0.5 else ("partly exophytic" if fraction > ENDOPHYTIC_MAX else "endophytic")


def outside_hull_fraction(points: np.ndarray, hull_points: np.ndarray) -> float:
    """Fraction of ``points`` (N x 3 mm) outside the convex hull of ``hull_points`` (1.0 for a flat hull)."""
    if len(points) == 0:
        return 0.0
    try:
        tri = Delaunay(hull_points[_hull_vertices(hull_points)])
    except (QhullError, ValueError):  # fewer than 4 points, or all in a plane: no volume to be inside
        return 1.0
    return float(np.mean(tri.find_simplex(points) < 0))


def _hull_vertices(points: np.ndarray) -> np.ndarray:
    return ConvexHull(points).vertices


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def case_statistics(labels: VolumeLike, image: VolumeLike | None = None, spec: DatasetSpec = KITS19,
                    case_id: str = "case") -> CaseStatistics:
    """Statistics of one label map (a path or a ``Volume``; see the module docstring).

    ``image``: the CT on the same grid, for the body midline (else the image centre). ``spec``: the
    label set (``kitseg.datasets.PRESETS``); its "kidney", "tumor" and "cyst" labels are used.
    """
    lab = read_label(labels, spec.label_values)
    lab = reorient(lab, CANONICAL_CODES, source=None) if lab.axis_codes != CANONICAL_CODES else lab
    ct = None
    if image is not None:
        ct = read_volume(image)
        ct = reorient(ct, CANONICAL_CODES, source=None) if ct.axis_codes != CANONICAL_CODES else ct
        if ct.shape != lab.shape:
            ct = None  # not on the label grid: fall back to the image centre
    arr = lab.array
    kidney, tumor, cyst = spec.labels.get("kidney", 1), spec.labels.get("tumor", 2), spec.labels.get("cyst")
    ml = lab.voxel_volume_ml
    mid = body_midline_x(arr, None if ct is None else ct.array)
    x = np.arange(arr.shape[2])
    sides: dict[Side, np.ndarray] = {"right": x < mid, "left": x >= mid}  # x points to the patient's left
    fg_cols = np.count_nonzero(arr > 0, axis=(0, 1))
    kid_cols = np.count_nonzero(arr == kidney, axis=(0, 1))
    tumors = _tumors(lab, arr == tumor, arr == kidney, sides, mid)
    return CaseStatistics(
        case_id=case_id, label_set=spec.name, spacing_mm=lab.spacing,
        midline="body" if ct is not None else "image centre",
        kidney_ml={s: float(fg_cols[m].sum()) * ml for s, m in sides.items()},
        kidney_tissue_ml={s: float(kid_cols[m].sum()) * ml for s, m in sides.items()},
        tumor_ml=int(np.count_nonzero(arr == tumor)) * ml, tumor_count=len(tumors), tumors=tumors,
        cyst_ml=int(np.count_nonzero(arr == cyst)) * ml if cyst is not None else None)


def _tumors(lab: Volume, tumor_mask: np.ndarray, kidney_mask: np.ndarray, sides: dict[Side, np.ndarray],
            mid: float) -> list[TumorStatistics]:
    box = bbox(tumor_mask)
    if box is None:
        return []
    comp, sizes = tumor_components(tumor_mask[box], lab.voxel_volume_ml)
    offset = np.array([b.start for b in box])
    kidneys = {s: _kidney_geometry(lab, kidney_mask & m[None, None, :]) for s, m in sides.items()}
    out = []
    for k in np.argsort(-sizes[1:], kind="stable") + 1:
        idx = np.argwhere(comp == k) + offset
        pts = np.atleast_2d(lab.index_to_world(idx))
        centroid_idx = idx.mean(axis=0)
        side: Side = "left" if centroid_idx[2] >= mid else "right"
        diameter = max_feret_diameter_mm(comp == k, lab, tuple(int(o) for o in offset))
        pole, fraction, e, l_part = None, None, None, None
        geom = kidneys[side]
        if geom is not None:
            hull_pts, lo, hi = geom
            zc = float(np.atleast_1d(lab.index_to_world(centroid_idx))[2])
            third = (hi - lo) / 3.0
            pole = "upper" if zc > hi - third else ("lower" if zc < lo + third else "middle")
            fraction = outside_hull_fraction(pts, hull_pts)
            e, l_part = renal_e(fraction), renal_l(pts[:, 2], lo, hi)
        out.append(TumorStatistics(
            volume_ml=float(sizes[k]) * lab.voxel_volume_ml, max_diameter_mm=diameter, side=side, pole=pole,
            exophytic_fraction=fraction, growth=None if fraction is None else _growth(fraction),
            centroid_mm=tuple(float(v) for v in np.atleast_1d(lab.index_to_world(centroid_idx))),
            renal=RenalParts(R=renal_r(diameter), E=e, L=l_part)))
    return out


def _kidney_geometry(lab: Volume, mask: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """(surface voxel centres in mm, lowest and highest patient z in mm) of one side's kidney tissue."""
    box = bbox(mask)
    if box is None:
        return None
    idx = np.argwhere(_surface(mask[box])) + np.array([b.start for b in box])
    pts = np.atleast_2d(lab.index_to_world(idx))
    return pts, float(pts[:, 2].min()), float(pts[:, 2].max())


def statistics_path(label_path: str | Path) -> Path:
    """``OUT/case_00001.nii.gz`` -> ``OUT/case_00001.json`` (the file ``--statistics`` writes)."""
    label_path = Path(label_path)
    name = label_path.name
    for suffix in (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return label_path.with_name(f"{name}.json")


def write_statistics(stats: CaseStatistics, path: str | Path) -> Path:
    """Write ``stats`` as JSON, atomically."""
    from kitseg._atomic import write_text

    write_text(path, stats.model_dump_json(indent=2) + "\n")
    return Path(path)


__all__ = ["BODY_HU", "CaseStatistics", "RenalParts", "TumorStatistics", "body_midline_x", "case_statistics",
           "max_feret_diameter_mm", "outside_hull_fraction", "renal_e", "renal_l", "renal_r", "statistics_path",
           "write_statistics"]
