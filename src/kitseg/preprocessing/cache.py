"""Preprocess a whole dataset into a resumable cache folder (each case by `kitseg.preprocessing.pipeline`).

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
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from kitseg import __version__
from kitseg._atomic import atomic_path, remove_partials, write_text
from kitseg.datasets import Case, Dataset
from kitseg.errors import KitsegError
from kitseg.preprocessing.fingerprint import compute_fingerprint
from kitseg.preprocessing.pipeline import Preprocessed, preprocess_case
from kitseg.preprocessing.progress import progress_map
from kitseg.preprocessing.records import CacheInfo, CaseRecord, Fingerprint, dump_json
from kitseg.preprocessing.spec import PreprocessSpec

CachedCase = Preprocessed  # what load_case returns


class CacheIndex(BaseModel):
    """``index.json``: the entries of every finished case, in the order cases finished."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = 1
    cases: dict[str, list[str]] = {}


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
    case, dspec, spec, fingerprint, cache_dir, compress, roi_dir = job
    image, label = case.load(dspec, need_image=False)
    roi_from = None if roi_dir is None else read_roi(roi_dir, case.case_id, label)
    entries = preprocess_case(image, label, spec, fingerprint, case_id=case.case_id, roi_from=roi_from,
                              image_path=None if case.image is None else str(case.image),
                              label_path=None if case.label is None else str(case.label))
    for entry in entries:
        _write_entry(cache_dir, entry, compress)
    return [e.record for e in entries]


def read_roi(roi_dir: Path, case_id: str, like) -> np.ndarray:
    """An earlier stage's predicted labels of a case (``<roi_dir>/<case>.nii.gz``), on the case's grid."""
    from kitseg.io import read_volume

    path = Path(roi_dir) / f"{case_id}.nii.gz"
    if not path.is_file():
        raise KitsegError(f"no prediction of case {case_id} to crop around", path)
    vol = read_volume(path)
    if like is not None and vol.shape != like.shape:
        raise KitsegError(f"prediction of shape {vol.shape} for a case of shape {like.shape}", path)
    return vol.array


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
                       compress: bool = True, roi_dir: str | Path | None = None) -> list[CaseRecord]:
    """Preprocess every case of ``dataset`` into ``cache_dir``; resumes where a previous run stopped.

    ``roi_dir``: crop the ROI around an earlier stage's predictions (``<roi_dir>/<case>.nii.gz``, labels
    on the case's grid; a cascade stage with ``prior_source: predicted``) instead of the ground truth.

    A fingerprint is computed when ``spec`` needs one and none is given (or stored in the cache).
    Returns the records of all entries, in dataset order.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_partials(cache_dir)
    if fingerprint is None and (cache_dir / "cache.json").exists():
        fingerprint = _open_cache(cache_dir, dataset, spec, None).fingerprint
    if fingerprint is None and spec.needs_fingerprint:
        fingerprint = compute_fingerprint(dataset, workers=workers, progress=progress)
    _open_cache(cache_dir, dataset, spec, fingerprint)
    index = read_index(cache_dir)
    todo = [c for c in dataset.cases if not (c.case_id in index.cases and _is_done(cache_dir, index.cases[c.case_id]))]
    jobs = [(c, dataset.spec, spec, fingerprint, cache_dir, compress, None if roi_dir is None else Path(roi_dir))
            for c in todo]

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


__all__ = ["CacheIndex", "CachedCase", "list_entries", "load_case", "load_record", "load_spec",
           "preprocess_dataset"]
