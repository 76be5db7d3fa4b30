"""Clinical measurements of a label map: volumes, largest tumor diameter, laterality.

Definitions (also in docs/EVALUATION.md):
- Volumes in ml = voxel count x voxel volume. ``kidney_with_masses_ml`` is the kidney *including*
  tumor (and cysts); ``kidney_ml`` is kidney tissue without them.
- Largest tumor diameter = maximum Feret (caliper) diameter of the largest tumor component (by
  volume, 26-connectivity): the largest distance in mm between the centres of two of its surface
  voxels, in patient coordinates (spacing and direction applied). Measured between voxel centres it
  can be short of the true extent by up to one voxel size along the measured direction. The diameter
  and the body midline are `kitseg.stats` functions, shared with `kitseg predict --statistics`.
- Tumors: the 26-connected tumor pieces of at least 0.1 ml (``kitseg.metrics.tumors``, the definition
  metrics.csv uses too); smaller pieces count in the tumor volume, not in the count, side or diameter.
- Laterality: canonical arrays have x pointing to the patient's LEFT (higher x index = more to the
  patient's left). The body midline is the x centroid of the body (CT > -500 HU) on the slices
  holding the kidneys, or the image centre without an image. A voxel or a component (by its
  centroid) right of the midline is on the patient's right. A horseshoe kidney counts for the side
  of each of its voxels.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import ndimage

from kitseg.metrics.tumors import tumor_components
from kitseg.stats import body_midline_x, max_feret_diameter_mm
from kitseg.volume import Volume, bbox


class Measurements(BaseModel):
    """What the report shows for one label map."""

    model_config = ConfigDict(extra="forbid")
    kidney_ml: float  # kidney tissue without tumor/cyst
    tumor_ml: float
    cyst_ml: float | None = None
    kidney_with_masses_ml: float  # kidney including tumor and cysts
    right_kidney_ml: float  # incl. masses, patient's right
    left_kidney_ml: float
    tumor_count: int
    largest_tumor_ml: float | None
    largest_tumor_diameter_mm: float | None
    tumor_side: str  # "right", "left", "both" or "none"
    midline_x: float  # index of the body midline used


def measure(labels: Volume, image: Volume | None = None, tumor: int = 2, cyst: int | None = None) -> Measurements:
    """Volumes, per-side kidney volumes, tumor count/size/diameter and tumor side of a label map."""
    arr = labels.array
    ml = labels.voxel_volume_ml
    mid = body_midline_x(arr, None if image is None else image.array)
    fg_cols = np.count_nonzero(arr > 0, axis=(0, 1))
    x = np.arange(arr.shape[2])
    right = float(fg_cols[x < mid].sum()) * ml
    left = float(fg_cols[x >= mid].sum()) * ml
    n_fg = int(np.count_nonzero(arr))
    n_tumor = int(np.count_nonzero(arr == tumor))
    n_cyst = int(np.count_nonzero(arr == cyst)) if cyst is not None else 0
    sides, count, largest_ml, diameter = set(), 0, None, None
    box = bbox(arr == tumor)
    if box is not None:
        comp, sizes = tumor_components(arr[box] == tumor, ml)
        count = sizes.size - 1
        if count:
            keep = list(range(1, sizes.size))
            centroids = ndimage.center_of_mass(np.ones(comp.shape), comp, keep)
            sides = {"left" if c[2] + box[2].start >= mid else "right" for c in centroids}
            big = int(np.argmax(sizes[1:])) + 1
            largest_ml = float(sizes[big]) * ml
            diameter = max_feret_diameter_mm(comp == big, labels, tuple(b.start for b in box))
    side = "none" if not sides else ("both" if len(sides) == 2 else sides.pop())
    return Measurements(kidney_ml=float(n_fg - n_tumor - n_cyst) * ml, tumor_ml=n_tumor * ml,
                        cyst_ml=n_cyst * ml if cyst is not None else None, kidney_with_masses_ml=n_fg * ml,
                        right_kidney_ml=right, left_kidney_ml=left, tumor_count=count, largest_tumor_ml=largest_ml,
                        largest_tumor_diameter_mm=diameter, tumor_side=side, midline_x=mid)
