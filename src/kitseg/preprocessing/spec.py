"""What a stage's preprocessing does, as pure data: `PreprocessSpec`, `IntensitySpec`, `RoiSpec`.

A recipe embeds one `PreprocessSpec` per stage. The order of operations is fixed
(`kitseg.preprocessing.pipeline.preprocess_case`):

1. ROI crop (``roi``), in the original grid, around the kidney (ground truth when training,
   the previous stage's prediction at inference);
2. resampling to the target grid (``target_spacing`` | ``slice_spacing`` | ``slice_spacing_factor`` |
   ``target_shape`` | ``in_plane_shape``), then zero padding (``pad_to_shape``);
3. 3x3x3 median denoising (``intensity.median_denoise``);
4. intensity normalization (``intensity.scheme``).

Grid convention (see docs/PREPROCESSING.md): the resampled grid covers the same field of view as
the input (the outer faces of the voxel boxes coincide: ``new_shape * new_spacing ==
old_shape * old_spacing``). A target spacing is turned into a shape with nnU-Net's rule
``new_shape = round(old_shape * old_spacing / target_spacing)`` and the exact spacing is then
``old_shape * old_spacing / new_shape`` (within half a voxel of the target).

`PRESETS` holds the variants the papers use, each citing its section.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1

#: Percentiles (in percent) the fingerprint stores; ``clip_percentiles`` must use these.
STORED_PERCENTILES = (0.05, 0.5, 99.5, 99.95)

Scheme = Literal["percentile_zscore", "window", "window_zscore", "volume_zscore", "kidney_window",
                 "nnunet_ct", "none"]


class IntensitySpec(BaseModel):
    """How voxel values become network inputs.

    Schemes (``normalize`` in ``kitseg.preprocessing.intensity``):

    - ``percentile_zscore`` (Zhang et al. 2.3 "Normalization"): clip to the percentiles
      ``clip_percentiles`` (default 0.05 % and 99.5 %), then subtract the dataset mean and divide
      by the dataset std. ``scope`` names the voxels the dataset statistics were collected over:
      ``"image"`` (whole images; Zhang stage 1) or ``"roi"`` (the stage's ROI boxes, the same rule
      as its ``roi``; Zhang stage 2). ``clip``: ``"dataset"`` takes the percentiles from the
      fingerprint; ``"case"`` from the voxels being normalized, i.e. each case's own image (stage 1)
      or its own ROI box (stage 2): Zhang et al.'s "for each data case, 1) do percentile clipping".
    - ``nnunet_ct`` (nnU-Net's CT scheme, the baseline): clip to the 0.5-99.5 percentiles of the
      dataset's foreground (label > 0) voxels, z-score with their mean and std. Uses the
      ``"foreground"`` statistics whatever ``scope`` says.
    - ``window`` (3D FCN-PPM III.B.1): clip to ``window`` = (-200, 500) HU, scale to 0..1, and
      with ``subtract_dataset_mean`` subtract the dataset mean of the scaled values.
    - ``window_zscore`` (MLPerf KiTS19 reference): clip to ``window`` = (-79, 304) HU, then
      ``(x - mean) / std`` with the fixed constants ``mean`` = 101.0, ``std`` = 76.9.
    - ``volume_zscore`` (TuNet 3.4): zero mean, unit variance of each volume on its own.
    - ``kidney_window`` (3D ResUNet + 2.5D VNet 3.1): the masked CT: inside the kidney mask,
      clip to ``window`` and scale to 0..1; outside, 0.
    - ``none``: values unchanged (cast to float32).

    ``median_denoise`` (TuNet 3.2 and 3.6): a 3x3x3 median filter before normalization.
    """

    model_config = ConfigDict(extra="forbid")
    scheme: Scheme = "nnunet_ct"
    clip_percentiles: tuple[float, float] = (0.05, 99.5)
    window: tuple[float, float] | None = None
    scope: Literal["foreground", "image", "roi"] = "foreground"
    subtract_dataset_mean: bool = False
    clip: Literal["dataset", "case"] = "dataset"
    mean: float | None = None
    std: float | None = None
    median_denoise: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntensitySpec:
        lo, hi = self.clip_percentiles
        if lo not in STORED_PERCENTILES or hi not in STORED_PERCENTILES or lo >= hi:
            raise ValueError(f"clip_percentiles must be two of {STORED_PERCENTILES} (low, high), got {lo, hi}")
        if self.scheme in ("window", "window_zscore", "kidney_window"):
            if self.window is None or self.window[0] >= self.window[1]:
                raise ValueError(f"scheme {self.scheme!r} needs window = (low, high) HU with low < high")
        if self.scheme == "window_zscore" and (self.mean is None or not self.std):
            raise ValueError("scheme 'window_zscore' needs fixed constants mean and std (std > 0)")
        if self.subtract_dataset_mean and self.scheme != "window":
            raise ValueError("subtract_dataset_mean applies to scheme 'window' only")
        if self.clip == "case" and self.scheme != "percentile_zscore":
            raise ValueError("clip: case applies to scheme 'percentile_zscore' only")
        return self

    @property
    def stats_region(self) -> str | None:
        """Which dataset statistics this scheme reads from the fingerprint (None: it needs none)."""
        if self.scheme == "nnunet_ct":
            return "foreground"
        if self.scheme == "percentile_zscore" or (self.scheme == "window" and self.subtract_dataset_mean):
            return self.scope
        return None


class RoiSpec(BaseModel):
    """Crop around the kidney before resampling (the input of a cascade's second stage).

    When training, the box comes from the ground truth (label > 0); at inference from the
    previous stage's prediction. ``margin_mm`` is added on each side (one value or (z, y, x)),
    the box is grown symmetrically to at least ``min_shape`` voxels (original grid) and
    ``min_size_mm`` millimetres (Zhang et al. stage 2: 259.2 mm in-plane), and clipped to the
    volume. ``axes="z"`` crops slices only and keeps full slices (3D ResUNet + 2.5D VNet 3.1: "we
    remove the slices without the kidneys"). ``kidneys``: ``"both"`` one box around all kidney
    voxels; ``"each"`` one box per kidney (the two largest connected components, entries
    ``<case>_k0`` on the patient's right and ``<case>_k1``); ``"with_tumor"`` the kidney holding
    the most tumor (3D FCN-PPM III.A: only the lesioned kidney, one ROI per patient).
    """

    model_config = ConfigDict(extra="forbid")
    margin_mm: float | tuple[float, float, float] = 0.0
    axes: Literal["zyx", "z"] = "zyx"
    kidneys: Literal["both", "each", "with_tumor"] = "both"
    min_shape: tuple[int, int, int] | None = None
    min_size_mm: tuple[float, float, float] | None = None

    def min_voxels(self, spacing) -> tuple[int, int, int] | None:
        """``min_shape`` and ``min_size_mm`` as one minimum box shape in voxels of ``spacing``."""
        if self.min_shape is None and self.min_size_mm is None:
            return None
        vox = [1, 1, 1] if self.min_shape is None else list(self.min_shape)
        if self.min_size_mm is not None:
            vox = [max(v, math.ceil(mm / float(sp) - 1e-6)) for v, mm, sp in zip(vox, self.min_size_mm, spacing)]
        return tuple(vox)  # type: ignore[return-value]


class PreprocessSpec(BaseModel):
    """The geometry and intensity preprocessing of one stage.

    Output grid, per axis: ``target_spacing`` (z, y, x mm, or ``"median"``: the fingerprint's
    median spacing with nnU-Net's anisotropy rule), or ``target_shape`` (z, y, x voxels), or a slice
    rule (``slice_spacing`` mm or ``slice_spacing_factor`` x the case's own slice spacing) combined
    with an optional ``in_plane_shape`` (y, x voxels); axes not named keep their grid.
    ``pad_to_shape`` (TuNet 3.4) resamples every case to one common spacing (the largest field of
    view in the dataset divided by ``target_shape``) and pads it with ``pad_value`` to exactly
    ``target_shape``. ``anisotropy_threshold``: when the largest spacing exceeds this times the
    smallest (nnU-Net's rule, 3), the slice axis is interpolated linearly (images) or by nearest
    neighbour (labels) whatever the in-plane order.
    """

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    target_spacing: list[float] | Literal["median"] | None = None
    slice_spacing: float | None = None
    slice_spacing_factor: float | None = None
    target_shape: list[int] | None = None
    in_plane_shape: list[int] | None = None
    pad_to_shape: bool = False
    pad_value: float = 0.0
    image_interpolation: Literal["linear", "cubic"] = "linear"
    label_interpolation: Literal["nearest", "linear_per_label"] = "nearest"
    anisotropy_threshold: float = Field(3.0, gt=1.0)
    roi: RoiSpec | None = None
    intensity: IntensitySpec = Field(default_factory=IntensitySpec)

    @model_validator(mode="after")
    def _check(self) -> PreprocessSpec:
        whole = [n for n in ("target_spacing", "target_shape") if getattr(self, n) is not None]
        slice_rules = [n for n in ("slice_spacing", "slice_spacing_factor") if getattr(self, n) is not None]
        if len(whole) > 1 or (whole and (slice_rules or self.in_plane_shape)) or len(slice_rules) > 1:
            raise ValueError("give one of target_spacing, target_shape, or one slice rule (slice_spacing | "
                             f"slice_spacing_factor) with an optional in_plane_shape; got {whole + slice_rules}")
        if isinstance(self.target_spacing, list) and (len(self.target_spacing) != 3
                                                      or min(self.target_spacing) <= 0):
            raise ValueError("target_spacing must be three positive numbers (z, y, x mm) or 'median'")
        if self.target_shape is not None and (len(self.target_shape) != 3 or min(self.target_shape) < 1):
            raise ValueError("target_shape must be three positive voxel counts (z, y, x)")
        if self.in_plane_shape is not None and (len(self.in_plane_shape) != 2 or min(self.in_plane_shape) < 1):
            raise ValueError("in_plane_shape must be two positive voxel counts (y, x)")
        for n in ("slice_spacing", "slice_spacing_factor"):
            if getattr(self, n) is not None and getattr(self, n) <= 0:
                raise ValueError(f"{n} must be positive")
        if self.pad_to_shape and self.target_shape is None:
            raise ValueError("pad_to_shape needs target_shape")
        return self

    @property
    def resamples(self) -> bool:
        """Whether this spec changes the grid at all (3D FCN-PPM's does not)."""
        return any(getattr(self, n) is not None for n in (
            "target_spacing", "slice_spacing", "slice_spacing_factor", "target_shape", "in_plane_shape"))

    @property
    def needs_fingerprint(self) -> bool:
        """Whether dataset statistics are needed (median spacing, common padding grid, intensities)."""
        return self.target_spacing == "median" or self.pad_to_shape or self.intensity.stats_region is not None


def _spec(**kw) -> PreprocessSpec:
    return PreprocessSpec(**kw)


#: The papers' variants. Where a paper leaves a value open, the comment says which one we chose
#: (and docs/PREPROCESSING.md, "Our readings of open points").
PRESETS: dict[str, PreprocessSpec] = {
    # Zhang et al. 2.3 work on "interpolated data with the same affine transformation over all
    # patients" (the KiTS19 interpolated release: 3.22 x 1.62 x 1.62 mm). Stage 1 doubles the slice
    # spacing: 6.44 x 1.62 x 1.62 mm, where an 80 x 160 x 160 patch covers "more than a quarter of
    # total voxels" (two thirds of a median case; with the original 512 x 512 slices, a seventh).
    # The pipeline "mainly follows the nnUNet pre-processing path" (cubic images, per-label linear
    # labels). Normalization: "for each data case" clip to its (0.05 %, 99.5 %) percentiles, then
    # z-score with the mean and std of the statistics collecting step, "over entire image".
    "zhang_stage1": _spec(target_spacing=[6.44, 1.62, 1.62], image_interpolation="cubic",
                          label_interpolation="linear_per_label",
                          intensity=IntensitySpec(scheme="percentile_zscore", scope="image", clip="case")),
    # Zhang et al. 2.3: stage 2 "no resampling" (stays on the 3.22 x 1.62 x 1.62 mm grid); the ROI
    # crops have a median 40 x 160 x 160 voxels = 129 x 259 x 259 mm. A box around both kidneys
    # without margin, at least 259.2 mm (160 voxels) wide in-plane, gives exactly those medians on
    # the 150 KiTS19 label maps (their both-kidney box: median 130 x 93 x 224 mm; one kidney's box
    # would be a median 34 x 49 x 46 voxels). Statistics "over solely ROI": each case clipped at its
    # ROI's own percentiles, the mean and std over the dataset's ROI boxes (drawn by the same rule).
    # The zhang2019_cascade recipe adds a margin (two stage-1 slices in z, 10 mm in-plane) to this.
    "zhang_stage2": _spec(target_spacing=[3.22, 1.62, 1.62], image_interpolation="cubic",
                          label_interpolation="linear_per_label",
                          roi=RoiSpec(margin_mm=0.0, kidneys="both", min_size_mm=(0.0, 259.2, 259.2)),
                          intensity=IntensitySpec(scheme="percentile_zscore", scope="roi", clip="case")),
    # TuNet 2.1: L-Net input 128x128x64 (x, y, z); 3.4: resample, zero-pad to the largest
    # volume, zero mean / unit variance per volume.
    "tunet_lnet": _spec(target_shape=[64, 128, 128], pad_to_shape=True,
                        intensity=IntensitySpec(scheme="volume_zscore")),
    # TuNet 3.4: W-Net / T-Net input 256x256x128 (x, y, z).
    "tunet_wnet": _spec(target_shape=[128, 256, 256], pad_to_shape=True,
                        intensity=IntensitySpec(scheme="volume_zscore")),
    # TuNet 3.2/3.6: the same on 3x3x3 median-denoised data ("TuNet + median").
    "tunet_wnet_median": _spec(target_shape=[128, 256, 256], pad_to_shape=True,
                               intensity=IntensitySpec(scheme="volume_zscore", median_denoise=True)),
    # 3D ResUNet 2.2: trilinear to 2 mm slices, nearest for masks, slices reduced to 256x256.
    # The paper states no intensity scheme for this stage; we use the nnU-Net CT baseline.
    "resunet3d": _spec(slice_spacing=2.0, in_plane_shape=[256, 256],
                       intensity=IntensitySpec(scheme="nnunet_ct")),
    # 2.5D VNet 3.1: the masked CT (kidney mask x CT), trilinear to 1 mm slices, full 512x512
    # slices, slices without kidney removed, "HU value (40-50) in kidney region" normalized: we
    # read that as the soft-tissue window level 40-50 HU, width 400: (-160, 240) HU -> 0..1.
    "vnet25d": _spec(slice_spacing=1.0, roi=RoiSpec(margin_mm=0.0, axes="z"),
                     intensity=IntensitySpec(scheme="kidney_window", window=(-160.0, 240.0))),
    # 3D FCN-PPM II and III.B.1: a 150x150-pixel ROI around the (lesioned) kidney, no resampling,
    # clip to -200..500 HU, scale to 0..1, subtract the dataset mean. 150 pixels of the paper's
    # 0.59-0.74 mm CTs (III.A) are kept as a physical size, 111 mm, on every grid.
    "fcn_ppm": _spec(roi=RoiSpec(margin_mm=0.0, kidneys="with_tumor", min_size_mm=(0.0, 111.0, 111.0)),
                     intensity=IntensitySpec(scheme="window", window=(-200.0, 500.0), scope="roi",
                                             subtract_dataset_mean=True)),
    # MLPerf Training KiTS19 3D U-Net reference: 1.6 x 1.2 x 1.2 mm, clip -79..304 HU,
    # mean 101.0, std 76.9.
    "mlperf": _spec(target_spacing=[1.6, 1.2, 1.2],
                    intensity=IntensitySpec(scheme="window_zscore", window=(-79.0, 304.0), mean=101.0, std=76.9)),
    # nnU-Net 3d_fullres baseline: median spacing, cubic images, per-label linear labels, CT scheme.
    "nnunet_fullres": _spec(target_spacing="median", image_interpolation="cubic",
                            label_interpolation="linear_per_label", intensity=IntensitySpec(scheme="nnunet_ct")),
}
