"""Label maps in the formats people take them to: NIfTI (the default), DICOM-SEG, 3D Slicer .seg.nrrd.

``write_labels(labels, path, ...)`` picks the format from the file name (``FORMATS`` lists the
endings ``kitseg predict --format`` uses) and writes atomically:

- ``.nii.gz`` (any ``kitseg.io`` image ending): ``kitseg.io.write_volume``, uint8, the input's geometry;
- ``.dcm``: one DICOM Segmentation object referencing the source series (``dicom_seg.write_dicom_seg``);
  the input must be a DICOM series folder;
- ``.seg.nrrd``: a 3D Slicer segmentation with segment names, colours and terminology
  (``slicer_nrrd.write_seg_nrrd``).

``SEGMENTS`` names each label value's segment: name, colour (the report's Okabe-Ito colours) and the
DICOM/SNOMED codes of what it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kitseg.datasets import KITS19, DatasetSpec
from kitseg.errors import KitsegError
from kitseg.io import is_image_file, write_volume
from kitseg.volume import Volume

FORMATS = {"nifti": ".nii.gz", "nrrd": ".seg.nrrd", "dicom-seg": ".dcm"}


@dataclass(frozen=True)
class Segment:
    """What one label value is: a name, a display colour and coded concepts (SNOMED CT, DICOM CID 7150/7151)."""

    name: str
    colour: str  # "#rrggbb"
    category: tuple[str, str, str]  # (code, scheme, meaning): DICOM CID 7150 segmentation property category
    type: tuple[str, str, str]  # CID 7151 segmentation property type
    region: tuple[str, str, str] | None = None  # anatomic region of a lesion


_KIDNEY = ("64033007", "SCT", "Kidney")
_ANATOMY = ("91723000", "SCT", "Anatomical Structure")
_ABNORMAL = ("49755003", "SCT", "Morphologically Abnormal Structure")
SEGMENTS = {
    "kidney": Segment("Kidney", "#56B4E9", _ANATOMY, _KIDNEY),
    "tumor": Segment("Kidney tumor", "#E69F00", _ABNORMAL, ("108369006", "SCT", "Neoplasm"), _KIDNEY),
    "cyst": Segment("Kidney cyst", "#CC79A7", _ABNORMAL, ("367643001", "SCT", "Cyst"), _KIDNEY),
}


def segments_of(spec: DatasetSpec) -> dict[int, Segment]:
    """Label value -> Segment for a label set (an unknown label name gets a generic segment)."""
    out = {}
    for name, value in sorted(spec.labels.items(), key=lambda kv: kv[1]):
        if value > 0:
            out[value] = SEGMENTS.get(name, Segment(name.capitalize(), "#999999", _ABNORMAL, _ABNORMAL))
    return out


def format_of(path: str | Path) -> str:
    """The format a file name asks for: "dicom-seg", "nrrd" (``.seg.nrrd``) or "nifti" (other image endings)."""
    name = str(path).lower()
    if name.endswith(".dcm"):
        return "dicom-seg"
    if name.endswith(".seg.nrrd"):
        return "nrrd"
    if is_image_file(name):
        return "nifti"
    raise KitsegError("unknown output format; use a name ending in .nii.gz, .seg.nrrd or .dcm (DICOM-SEG)", path)


def write_labels(labels: Volume, path: str | Path, *, spec: DatasetSpec = KITS19, source: str | Path | None = None,
                 algorithm: str = "kitseg", recipe: str = "") -> Path:
    """Write a label map in the format its name asks for (see the module docstring), atomically.

    ``source``: the DICOM series folder the labels were predicted from (DICOM-SEG only). ``recipe``:
    the model's recipe, recorded in DICOM-SEG and NRRD.
    """
    fmt = format_of(path)
    labels = labels.with_array(np.asarray(labels.array).astype(np.uint8, copy=False))
    if fmt == "dicom-seg":
        from kitseg.export.dicom_seg import write_dicom_seg

        if source is None:
            raise KitsegError("DICOM-SEG output needs the DICOM series the labels belong to", path)
        return write_dicom_seg(labels, source, path, spec=spec, algorithm=algorithm, recipe=recipe)
    if fmt == "nrrd":
        from kitseg.export.slicer_nrrd import write_seg_nrrd

        return write_seg_nrrd(labels, path, spec=spec, recipe=recipe)
    return write_volume(labels, path, dtype=np.uint8)


__all__ = ["FORMATS", "SEGMENTS", "Segment", "format_of", "segments_of", "write_labels"]
