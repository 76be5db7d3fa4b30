"""Typed JSON records of preprocessing: what was done to a case, so that it can be undone exactly.

- `CropRecord`: a crop box in the original grid (``paste`` inverts it).
- `ResampleRecord`: the original and the resampled grid, plus padding (``restore`` inverts it).
- `IntensityStats`, `CaseFingerprint`, `Fingerprint`: dataset statistics (``fingerprint.json``).
- `CaseRecord`, `CacheInfo`: the cache's per-case and per-folder metadata.

Every model forbids unknown fields and carries a ``schema_version``.
"""

from __future__ import annotations

import re

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kitseg.preprocessing.spec import PreprocessSpec, RoiSpec

SCHEMA_VERSION = 1

# The intensity histogram of the fingerprint: 1 HU bins from -1024 to 3071 HU (values outside
# fall in the end bins). It gives exact dataset means of any clipped/windowed intensity.
HIST_LOW = -1024
HIST_BINS = 4096


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


_NUMBER_LIST = re.compile(r"\[\s+([-+\d.eE,\s]*?)\s+\]")


def dump_json(model: BaseModel) -> str:
    """Indented JSON with lists of numbers kept on one line (shapes, affines, histograms)."""
    text = model.model_dump_json(indent=1)
    return _NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def _affine_list(a) -> list[list[float]]:
    return [[float(v) for v in row] for row in np.asarray(a, dtype=float)]


class CropRecord(_Model):
    """A crop of a (z, y, x) grid: ``bbox`` = [[start, stop]] * 3 in the original indices."""

    schema_version: int = SCHEMA_VERSION
    original_shape: tuple[int, int, int]
    original_affine: list[list[float]]
    bbox: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in self.bbox)  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in self.bbox)  # type: ignore[return-value]


class ResampleRecord(_Model):
    """A resampling from the original grid to ``shape``/``affine``, then padding by ``pad``.

    ``pad`` = [[before, after]] * 3 voxels; the padded array has ``padded_shape``. ``anisotropic``
    records whether the slice axis was interpolated separately (``restore`` does the same).
    """

    schema_version: int = SCHEMA_VERSION
    original_shape: tuple[int, int, int]
    original_affine: list[list[float]]
    shape: tuple[int, int, int]
    affine: list[list[float]]
    pad: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0), (0, 0))
    anisotropic: bool = False

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        return tuple(s + a + b for s, (a, b) in zip(self.shape, self.pad))  # type: ignore[return-value]

    @property
    def padded_affine(self) -> np.ndarray:
        """Affine of the padded array: the resampled grid extended by ``pad`` before each axis."""
        aff = np.array(self.affine, dtype=float)
        aff[:3, 3] -= aff[:3, :3] @ np.array([p[0] for p in self.pad], dtype=float)
        return aff

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(np.array(self.affine)[:3, :3], axis=0))  # type: ignore

    @property
    def is_identity(self) -> bool:
        return self.shape == self.original_shape and not any(a or b for a, b in self.pad)


class IntensityStats(_Model):
    """Intensity statistics of a set of voxels (nnU-Net's fingerprint, plus a 1 HU histogram).

    ``mean``/``std`` are exact over all voxels; the percentiles (in percent: p00_05 = 0.05 %) come
    from a deterministic sample of at most ``samples_per_case`` voxels per case (all voxels when a
    case has fewer), as nnU-Net does.
    """

    schema_version: int = SCHEMA_VERSION
    n_voxels: int
    mean: float
    std: float
    min: float
    max: float
    p00_05: float
    p00_5: float
    p99_5: float
    p99_95: float
    histogram: list[int] = Field(default_factory=list, repr=False)

    def percentile(self, q: float) -> float:
        """One of the stored percentiles (0.05, 0.5, 99.5, 99.95)."""
        name = {0.05: "p00_05", 0.5: "p00_5", 99.5: "p99_5", 99.95: "p99_95"}.get(q)
        if name is None:
            raise ValueError(f"percentile {q} is not stored; use 0.05, 0.5, 99.5 or 99.95")
        return float(getattr(self, name))

    def window_mean(self, low: float, high: float) -> float:
        """Dataset mean of ``(clip(x, low, high) - low) / (high - low)`` (3D FCN-PPM III.B.1).

        Computed from the 1 HU histogram (bin centres), exact to within 0.5 HU / (high - low).
        """
        if not self.histogram:
            raise ValueError("these statistics carry no histogram")
        counts = np.asarray(self.histogram, dtype=np.float64)
        values = HIST_LOW + np.arange(len(counts), dtype=np.float64)
        scaled = (np.clip(values, low, high) - low) / (high - low)
        return float((scaled * counts).sum() / counts.sum())


class CaseFingerprint(_Model):
    """Geometry and label statistics of one case."""

    case_id: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    axis_codes: str
    label_voxels: dict[str, int] = Field(default_factory=dict)
    kidney_bbox_mm: tuple[float, float, float] | None = None
    kidney_component_bbox_mm: list[tuple[float, float, float]] = Field(default_factory=list)
    has_image: bool = True


class Fingerprint(_Model):
    """Dataset statistics (``fingerprint.json``): per-case geometry, medians, intensities, classes.

    ``intensity`` maps a region to its statistics: ``"foreground"`` (label > 0, nnU-Net),
    ``"image"`` (all voxels, Zhang et al. stage 1), ``"roi"`` (voxels in the boxes that ``roi``, a
    stage's RoiSpec, draws around the ground truth; without one the kidney bounding box grown by
    ``roi_margin_mm``; Zhang et al. stage 2 and 3D FCN-PPM). Empty when no case has an image.
    """

    schema_version: int = SCHEMA_VERSION
    dataset: str
    n_cases: int
    cases: list[CaseFingerprint]
    median_spacing: tuple[float, float, float]
    median_shape: tuple[float, float, float]
    spacing_p10: tuple[float, float, float]
    max_extent_mm: tuple[float, float, float]
    class_fractions: dict[str, float]
    median_kidney_bbox_mm: tuple[float, float, float] | None = None
    max_kidney_bbox_mm: tuple[float, float, float] | None = None
    intensity: dict[str, IntensityStats] = Field(default_factory=dict)
    samples_per_case: int = 10000
    roi_margin_mm: float = 0.0
    roi: RoiSpec | None = None
    seed: int = 0

    @property
    def foreground(self) -> IntensityStats | None:
        return self.intensity.get("foreground")


class CaseRecord(_Model):
    """What the cache holds for one entry (a case, or one kidney of a case) and how to undo it.

    A prediction on the cached grid goes back to the original image with
    ``paste(restore(pred, record.resample), record.crop)`` (``paste`` only when ``crop`` is set).
    """

    schema_version: int = SCHEMA_VERSION
    entry_id: str
    case_id: str
    image_path: str | None
    label_path: str | None
    original_shape: tuple[int, int, int]
    original_affine: list[list[float]]
    source_axis_codes: str | None
    crop: CropRecord | None
    resample: ResampleRecord
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    channels: list[str] = Field(default_factory=lambda: ["ct"])
    has_label: bool
    label_voxels: dict[str, int] = Field(default_factory=dict)
    stats: IntensityStats | None = None


class CacheInfo(_Model):
    """``cache.json``: the spec and fingerprint a cache folder was made with."""

    schema_version: int = SCHEMA_VERSION
    dataset_root: str
    spec: PreprocessSpec
    fingerprint: Fingerprint | None = None
    kitseg_version: str = ""


__all__ = ["CacheInfo", "CaseFingerprint", "CaseRecord", "CropRecord", "Fingerprint", "IntensityStats",
           "ResampleRecord", "HIST_BINS", "HIST_LOW", "dump_json"]
