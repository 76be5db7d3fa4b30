"""Preprocess one case (`preprocess_case`) or a whole dataset into a resumable cache folder.

Cache layout (``CACHE_DIR``):

- ``cache.json``: `CacheInfo`, the `PreprocessSpec` and the `Fingerprint` the cache was made with;
- ``<entry>.npz``: ``image`` float32 (C, z, y, x) and, when labelled, ``label`` uint8 (z, y, x);
- ``<entry>.json``: the `CaseRecord` (geometry records to undo the preprocessing), written after
  its ``.npz``; an entry is a case, or one kidney of a case (``<case>_k0``, ``<case>_k1``);
- ``index.json``: `CacheIndex`, the entries of each finished case, rewritten after each case.

Every file is written under a temporary name and renamed when complete. On resume a case counts
as done when ``index.json`` lists it and all its entries' ``.json`` and ``.npz`` exist; temporary
files left by a kill are deleted. A folder serves one writer at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from kitseg import __version__
from kitseg._atomic import atomic_path, write_text
from kitseg.datasets import Case, Dataset
from kitseg.errors import KitsegError
from kitseg.preprocessing.crop import crop, kidney_boxes, label_counts
from kitseg.preprocessing.fingerprint import compute_fingerprint, median_target_spacing
from kitseg.preprocessing.grid import shape_for_spacing
from kitseg.preprocessing.intensity import median_denoise, normalize, stats_for
from kitseg.preprocessing.progress import progress_map
from kitseg.preprocessing.records import CacheInfo, CaseRecord, Fingerprint, _affine_list, dump_json
from kitseg.preprocessing.resample import resample
from kitseg.preprocessing.spec import PreprocessSpec
from kitseg.volume import Volume


class CacheIndex(BaseModel):
    """``index.json``: the entries of every finished case, in the order cases finished."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = 1
    cases: dict[str, list[str]] = {}


@dataclass(frozen=True)
class Preprocessed:
    """One preprocessed entry in memory: network input, label and the record to undo it."""

    image: np.ndarray  # float32 (C, z, y, x)
    label: np.ndarray | None  # uint8 (z, y, x)
    record: CaseRecord


CachedCase = Preprocessed  # what load_case returns


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


# ---------------------------------------------------------------------------------------------
# The cache folder
# ---------------------------------------------------------------------------------------------
def _write_entry(cache_dir: Path, entry: Preprocessed, compress: bool) -> None:
    arrays = {"image": entry.image}
    if entry.label is not None:
        arrays["label"] = entry.label
    with atomic_path(cache_dir / f"{entry.record.entry_id}.npz", suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compress else np.savez)(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
    write_text(cache_dir / f"{entry.record.entry_id}.json", dump_json(entry.record))


def _process(job) -> list[CaseRecord]:
    case, dspec, spec, fingerprint, cache_dir, compress = job
    image, label = case.load(dspec, need_image=False)
    entries = preprocess_case(image, label, spec, fingerprint, case_id=case.case_id,
                              image_path=None if case.image is None else str(case.image),
                              label_path=None if case.label is None else str(case.label))
    for entry in entries:
        _write_entry(cache_dir, entry, compress)
    return [e.record for e in entries]


def _clean_temporaries(cache_dir: Path) -> int:
    stray = [p for p in cache_dir.iterdir() if p.name.startswith(".") and ".part" in p.name]
    for p in stray:
        p.unlink(missing_ok=True)
    return len(stray)


def read_index(cache_dir: str | Path) -> CacheIndex:
    path = Path(cache_dir) / "index.json"
    if not path.exists():
        return CacheIndex()
    try:
        return CacheIndex.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise KitsegError(f"corrupt cache index ({str(exc).splitlines()[0]}); delete it to redo the cache",
                          path) from None


def _is_done(cache_dir: Path, entries: list[str]) -> bool:
    return all((cache_dir / f"{e}.json").exists() and (cache_dir / f"{e}.npz").exists() for e in entries)


def _open_cache(cache_dir: Path, dataset: Dataset, spec: PreprocessSpec, fingerprint: Fingerprint | None) -> CacheInfo:
    info_path = cache_dir / "cache.json"
    if info_path.exists():
        try:
            info = CacheInfo.model_validate_json(info_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise KitsegError(f"not a kitseg cache.json ({str(exc).splitlines()[0]})", info_path) from None
        if info.spec != spec:
            raise KitsegError("this cache folder was made with another preprocessing spec; "
                              "use a new folder or delete this one", cache_dir)
        if spec.needs_fingerprint and fingerprint is not None and info.fingerprint not in (None, fingerprint):
            raise KitsegError("this cache folder was made with another dataset fingerprint; "
                              "use a new folder or delete this one", cache_dir)
        return info
    info = CacheInfo(dataset_root=str(dataset.root), spec=spec, fingerprint=fingerprint, kitseg_version=__version__)
    write_text(info_path, dump_json(info))
    return info


def preprocess_dataset(dataset: Dataset, cache_dir: str | Path, spec: PreprocessSpec,
                       fingerprint: Fingerprint | None = None, workers: int = 2, progress: bool = True, *,
                       compress: bool = True) -> list[CaseRecord]:
    """Preprocess every case of ``dataset`` into ``cache_dir``; resumes where a previous run stopped.

    A fingerprint is computed when ``spec`` needs one and none is given (or stored in the cache).
    Returns the records of all entries, in dataset order.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _clean_temporaries(cache_dir)
    if fingerprint is None and (cache_dir / "cache.json").exists():
        fingerprint = _open_cache(cache_dir, dataset, spec, None).fingerprint
    if fingerprint is None and spec.needs_fingerprint:
        fingerprint = compute_fingerprint(dataset, workers=workers, progress=progress)
    _open_cache(cache_dir, dataset, spec, fingerprint)
    index = read_index(cache_dir)
    todo = [c for c in dataset.cases if not (c.case_id in index.cases and _is_done(cache_dir, index.cases[c.case_id]))]
    jobs = [(c, dataset.spec, spec, fingerprint, cache_dir, compress) for c in todo]

    def finished(case: Case, records: list[CaseRecord]) -> None:
        index.cases[case.case_id] = [r.entry_id for r in records]
        write_text(cache_dir / "index.json", index.model_dump_json(indent=1) + "\n")

    progress_map(_process, jobs, workers=workers, progress=progress, description="preprocess",
                 on_result=lambda i, recs: finished(todo[i], recs))
    return [load_record(cache_dir, e) for c in dataset.cases for e in index.cases.get(c.case_id, [])]


def list_entries(cache_dir: str | Path) -> list[str]:
    """The entry ids of a cache folder (finished cases only)."""
    return [e for entries in read_index(cache_dir).cases.values() for e in entries]


def load_record(cache_dir: str | Path, entry_id: str) -> CaseRecord:
    path = Path(cache_dir) / f"{entry_id}.json"
    try:
        return CaseRecord.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError:
        raise KitsegError(f"no cached entry {entry_id!r}", path) from None
    except ValueError as exc:
        raise KitsegError(f"not a kitseg case record ({str(exc).splitlines()[0]})", path) from None


def load_case(cache_dir: str | Path, case_id: str) -> CachedCase:
    """Read one cached entry: ``image`` (C, z, y, x) float32, ``label`` or None, ``record``."""
    record = load_record(cache_dir, case_id)
    path = Path(cache_dir) / f"{case_id}.npz"
    try:
        with np.load(path) as data:
            image = data["image"]
            label = data["label"] if "label" in data.files else None
    except (OSError, KeyError, ValueError) as exc:
        raise KitsegError(f"unreadable cache entry ({exc}); delete it and run preprocess again", path) from None
    return CachedCase(image, label, record)


def load_spec(cache_dir: str | Path) -> CacheInfo:
    path = Path(cache_dir) / "cache.json"
    try:
        return CacheInfo.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError:
        raise KitsegError("not a kitseg cache folder (no cache.json)", Path(cache_dir)) from None


__all__ = ["CacheIndex", "CachedCase", "Preprocessed", "list_entries", "load_case", "load_record",
           "load_spec", "preprocess_case", "preprocess_dataset", "target_grid"]
