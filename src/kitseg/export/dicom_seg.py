"""DICOM Segmentation objects (highdicom): one SEG that references its source CT series.

``write_dicom_seg(labels, series_folder, path)`` writes one binary DICOM-SEG object:

- it references the source series: same Study, Frame of Reference and patient; every frame points
  to its source slice (SOP Instance UID) and has the slice's position and orientation, so a DICOM
  viewer (OHIF, 3D Slicer, Weasis) overlays it aligned;
- one segment per label value: "Kidney" (SCT 64033007, category Anatomical Structure), "Kidney
  tumor" (Neoplasm, category Morphologically Abnormal Structure, region Kidney) and, for KiTS21/23,
  "Kidney cyst" (Cyst, region Kidney); automatic, with the display colours of the report;
- the algorithm: name "kitseg", family Artificial Intelligence (DCM 123110), kitseg's version and
  the model's recipe as a parameter; Manufacturer "kitseg", Manufacturer's Model Name the recipe.

Frames without a segment's voxels are left out (highdicom's default). The labels must lie on the
series' grid, which ``kitseg.inference.predict`` guarantees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kitseg import __version__
from kitseg._atomic import atomic_path
from kitseg.datasets import KITS19, DatasetSpec
from kitseg.errors import KitsegError
from kitseg.io import dicom_series_files, read_dicom_series
from kitseg.volume import Volume, reorient


def _code(triple):
    from highdicom.sr import CodedConcept

    value, scheme, meaning = triple
    return CodedConcept(value, scheme, meaning)


def _lab_colour(hex_colour: str):
    from highdicom.color import CIELabColor

    rgb = tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return CIELabColor.from_rgb(*rgb)


def series_layout(labels: Volume, series_folder: str | Path) -> np.ndarray:
    """The labels as a (slice, row, column) array in the order of ``dicom_series_files(series_folder)``.

    Checks that the labels lie on the series' grid (shape and geometry as read from the series).
    """
    files = dicom_series_files(series_folder)
    ref = read_dicom_series(series_folder)
    if labels.shape != ref.shape or not np.allclose(labels.affine, ref.affine, atol=1e-3):
        raise KitsegError(f"the labels ({labels.describe()}) do not lie on the DICOM series' grid "
                          f"({ref.describe()})", series_folder)
    native = reorient(labels, ref.source.axis_codes)  # ITK's array of the series: [file index, row, column]
    if native.shape[0] != len(files):
        raise KitsegError(f"the series has {len(files)} files but {native.shape[0]} slices", series_folder)
    return np.ascontiguousarray(native.array)


def write_dicom_seg(labels: Volume, series_folder: str | Path, path: str | Path, *, spec: DatasetSpec = KITS19,
                    algorithm: str = "kitseg", recipe: str = "") -> Path:
    """Write ``labels`` (a label Volume on the series' grid) as one DICOM-SEG object at ``path``, atomically."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from kitseg.export import segments_of

    series_folder, path = Path(series_folder), Path(path)
    array = series_layout(labels, series_folder)
    files = dicom_series_files(series_folder)
    sources = _read_sources(files, series_folder)
    segments = segments_of(spec)
    present = sorted(int(v) for v in np.unique(array) if v > 0)
    unknown = [v for v in present if v not in segments]
    if unknown:
        raise KitsegError(f"label values {unknown} have no segment in label set {spec.name}", path)
    algo = hd.AlgorithmIdentificationSequence(
        name=algorithm, family=codes.cid7162.ArtificialIntelligence, version=__version__,
        parameters={"recipe": recipe} if recipe else None)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=value, segment_label=seg.name, segmented_property_category=_code(seg.category),
        segmented_property_type=_code(seg.type), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo, tracking_uid=hd.UID(), tracking_id=f"{seg.name} (kitseg)",
        anatomic_regions=[_code(seg.region)] if seg.region else None, display_color=_lab_colour(seg.colour))
        for value, seg in segments.items()]
    # one binary frame stack per described segment, every segment described even when empty
    stack = np.stack([array == value for value in segments], axis=-1).astype(np.uint8)
    try:
        seg_ds = hd.seg.Segmentation(
            source_images=sources, pixel_array=stack, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=_series_number(sources),
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="kitseg",
            manufacturer_model_name=(recipe or algorithm)[:64], software_versions=f"kitseg {__version__}",
            device_serial_number="none", content_label="KITSEG", content_description=_describe(recipe)[:64],
            series_description=f"kitseg {recipe}".strip()[:64], omit_empty_frames=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise KitsegError(f"the DICOM series cannot carry a segmentation ({str(exc).splitlines()[0][:200]})",
                          series_folder) from None
    with atomic_path(path, suffix=".dcm") as tmp:
        seg_ds.save_as(tmp, enforce_file_format=True)
    return path


def _read_sources(files: list[str], series_folder: Path) -> list:
    """The series' headers (no pixels), with the identifiers a SEG must reference checked.

    An empty SOP Class or Instance UID is taken from the file meta header, which holds the same
    values by definition (some anonymizers blank only the data set's copy). A series without Study
    or Series Instance UID cannot be referenced: that is an error, not something to invent.
    """
    import pydicom

    sources = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError) as exc:
            raise KitsegError(f"a file of the DICOM series cannot be read by pydicom ({exc})", f) from None
        meta = getattr(ds, "file_meta", None)
        for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"),
                              ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not ds.get(key) and meta is not None and meta.get(meta_key):
                setattr(ds, key, meta.get(meta_key))
        missing = [k for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
                   if not ds.get(k)]
        if missing:
            raise KitsegError(f"has no {', '.join(missing)} (anonymized?); a DICOM-SEG could not reference it. "
                              "Use --format nifti or nrrd", f)
        sources.append(ds)
    return sources


def _series_number(sources) -> int:
    number = getattr(sources[0], "SeriesNumber", None)
    try:
        return int(number) + 100 if number is not None else 100
    except (TypeError, ValueError):
        return 100


def _describe(recipe: str) -> str:
    return f"kitseg {__version__} automatic kidney segmentation" + (f" ({recipe})" if recipe else "")


__all__ = ["series_layout", "write_dicom_seg"]
