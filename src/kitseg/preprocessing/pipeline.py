"""The per-case preprocessing pipeline that training (the cache) and inference (every stage) both run.

``preprocess_case`` crops around the kidneys (``spec.roi``), resamples to the stage's grid (``target_grid``),
denoises and normalizes one case, returning one `Preprocessed` entry per box with the `CaseRecord` that
undoes it (``kitseg.stages.grid``). The order of the steps is documented in `kitseg.preprocessing.spec`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kitseg.errors import KitsegError
from kitseg.preprocessing.crop import crop, kidney_boxes, label_counts
from kitseg.preprocessing.fingerprint import median_target_spacing
from kitseg.preprocessing.grid import shape_for_spacing
from kitseg.preprocessing.intensity import median_denoise, normalize, stats_for
from kitseg.preprocessing.records import CaseRecord, Fingerprint, _affine_list
from kitseg.preprocessing.resample import resample
from kitseg.preprocessing.spec import PreprocessSpec
from kitseg.volume import Volume


@dataclass(frozen=True)
class Preprocessed:
    """One preprocessed entry in memory: network input, label and the record to undo it."""

    image: np.ndarray  # float32 (C, z, y, x)
    label: np.ndarray | None  # uint8 (z, y, x)
    record: CaseRecord



def target_grid(shape, spacing, spec: PreprocessSpec, fingerprint: Fingerprint | None = None
                ) -> tuple[tuple[int, int, int], tuple[int, int, int] | None]:
    """The resampled shape of a (z, y, x) grid under ``spec``, and the padded shape (or None)."""
    if spec.target_spacing == "median":
        if fingerprint is None:
            raise KitsegError("target_spacing 'median' needs a fingerprint of the dataset")
        return shape_for_spacing(shape, spacing, median_target_spacing(fingerprint, spec.anisotropy_threshold)), None
    if spec.target_spacing is not None:
        return shape_for_spacing(shape, spacing, spec.target_spacing), None
    if spec.target_shape is not None:
        target = tuple(spec.target_shape)
        if not spec.pad_to_shape:
            return target, None  # type: ignore[return-value]
        if fingerprint is None:
            raise KitsegError("pad_to_shape needs a fingerprint (the largest field of view in the dataset)")
        common = [e / t for e, t in zip(fingerprint.max_extent_mm, target)]
        out = tuple(min(t, n) for t, n in zip(target, shape_for_spacing(shape, spacing, common)))
        return out, target  # type: ignore[return-value]
    z = shape[0]
    if spec.slice_spacing is not None:
        z = shape_for_spacing(shape, spacing, [spec.slice_spacing, None, None])[0]
    elif spec.slice_spacing_factor is not None:
        z = max(1, int(round(shape[0] / spec.slice_spacing_factor)))
    y, x = spec.in_plane_shape if spec.in_plane_shape is not None else shape[1:]
    return (int(z), int(y), int(x)), None


def preprocess_case(image: Volume | None, label: Volume | None, spec: PreprocessSpec,
                    fingerprint: Fingerprint | None = None, *, case_id: str = "case",
                    roi_from: np.ndarray | None = None, image_path: str | None = None,
                    label_path: str | None = None) -> list[Preprocessed]:
    """Crop, resample, denoise and normalize one case by ``spec`` (order in `kitseg.preprocessing.spec`).

    ``roi_from``: the label map the ROI crop (``spec.roi``) and the kidney_window mask are taken
    from (voxels > 0 are kidney); defaults to ``label`` (training on the ground truth). At inference
    pass the previous stage's prediction. Returns one entry, or one per kidney (``kidneys="each"``).
    """
    ref = image if image is not None else label
    if ref is None:
        raise KitsegError(f"case {case_id} has neither image nor label")
    if roi_from is None and label is not None:
        roi_from = label.array
    needs_mask = spec.roi is not None or spec.intensity.scheme == "kidney_window"
    if needs_mask and roi_from is None:
        raise KitsegError(f"case {case_id}: this stage crops around the kidney and needs a label or kidney mask")
    stats = stats_for(fingerprint, spec.intensity) if image is not None else None
    if spec.roi is None:
        boxes = [None]
    else:
        boxes = kidney_boxes(roi_from, ref.spacing, spec.roi.margin_mm, kidneys=spec.roi.kidneys,
                             axes=spec.roi.axes, min_shape=spec.roi.min_voxels(ref.spacing))
        boxes.sort(key=lambda b: (b[2].start, b[0].start))
    entries = []
    per_kidney = spec.roi is not None and spec.roi.kidneys == "each"
    window_mask = spec.intensity.scheme == "kidney_window" and image is not None
    mask_vol = ref.with_array(np.asarray(roi_from) > 0) if window_mask else None
    for i, box in enumerate(boxes):
        entry_id = f"{case_id}_k{i}" if per_kidney else case_id
        parts = {"image": image, "label": label, "mask": mask_vol}
        crop_record = None
        if box is not None:
            cropped = {}
            for k, v in parts.items():
                cropped[k], crop_record = (None, crop_record) if v is None else crop(v, box)
            parts = cropped
        grid = parts["image"] if parts["image"] is not None else parts["label"]
        shape, pad_to = target_grid(grid.shape, grid.spacing, spec, fingerprint)
        kw = dict(shape=shape, pad_to=pad_to, anisotropy_threshold=spec.anisotropy_threshold)
        arr = lab = None
        res_record = None
        if parts["image"] is not None:
            vol, res_record = resample(parts["image"], order=spec.image_interpolation, pad_value=spec.pad_value, **kw)
            arr = median_denoise(vol.array) if spec.intensity.median_denoise else vol.array
            mask = None
            if spec.intensity.scheme == "kidney_window":
                mask = resample(parts["mask"], order="nearest", **kw)[0].array
            arr = normalize(arr, spec.intensity, stats, mask)[None]
        if parts["label"] is not None:
            lvol, res_record = resample(parts["label"], order=spec.label_interpolation, **kw)
            lab = lvol.array.astype(np.uint8, copy=False)
        stats_small = stats.model_copy(update={"histogram": []}) if stats is not None else None
        record = CaseRecord(
            entry_id=entry_id, case_id=case_id, image_path=image_path, label_path=label_path,
            original_shape=ref.shape, original_affine=_affine_list(ref.affine),
            source_axis_codes=ref.source.axis_codes if ref.source else None, crop=crop_record, resample=res_record,
            shape=res_record.padded_shape, spacing=res_record.spacing, has_label=lab is not None,
            label_voxels={str(v): c for v, c in enumerate(label_counts(lab, int(lab.max()) + 1))} if lab is not None
            else {},
            stats=stats_small)
        entries.append(Preprocessed(arr if arr is not None else np.zeros((0,) + record.shape, np.float32), lab, record))
    return entries


__all__ = ["Preprocessed", "preprocess_case", "target_grid"]
