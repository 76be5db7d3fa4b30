"""Predicting many CTs: one file, or a folder that resumes, skips finished cases and shards over ranks.

``predict_folder(inputs, out_dir, run)``:

- finds the CTs with ``kitseg.datasets.find_images`` (image files, DICOM series folders, a KiTS or
  nnU-Net dataset folder) and writes ``OUT/<case_id>.nii.gz`` (uint8 labels, the input's exact
  geometry and orientation) atomically: a file under its final name is always complete;
- skips a case whose output exists and reads (a second run does no work; a killed run resumes
  where it stopped, after deleting the temporary files its killed write left behind);
- gives rank r of a ``torchrun`` job (``RANK``/``WORLD_SIZE``) every WORLD_SIZE-th case from r:
  ranks share nothing and need no process group; on CUDA each uses GPU ``LOCAL_RANK``;
- reports a bad input and goes on with the others; the summary lists every case's outcome.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
from pydantic import BaseModel, ConfigDict

from kitseg._atomic import atomic_path, remove_partials
from kitseg.datasets import find_images
from kitseg.errors import KitsegError
from kitseg.export import FORMATS, write_labels
from kitseg.inference.cascade import Probabilities, predict_case
from kitseg.io import read_header
from kitseg.stages.loaded_run import LoadedRun
from kitseg.volume import Volume, reorient

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1


class CaseResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    case_id: str
    input: str
    output: str
    status: Literal["done", "skipped", "failed"]
    seconds: float = 0.0
    message: str = ""


class FolderSummary(BaseModel):
    """What one rank did: every case of its share with its outcome."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    rank: int = 0
    world_size: int = 1
    cases: list[CaseResult] = []

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.cases)

    def describe(self) -> str:
        head = f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""
        lines = [f"{head}{self.count('done')} predicted, {self.count('skipped')} already done, "
                 f"{self.count('failed')} failed"]
        lines += [f"  failed {c.case_id}: {c.message}" for c in self.cases if c.status == "failed"]
        return "\n".join(lines)


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's rank and the number of ranks: arguments, else torchrun's RANK/WORLD_SIZE, else 0/1."""
    try:
        r = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
        w = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
    except ValueError:
        raise KitsegError("RANK and WORLD_SIZE must be integers (as torchrun sets them)") from None
    if w < 1 or not 0 <= r < w:
        raise KitsegError(f"rank {r} is not in 0..{w - 1} (WORLD_SIZE {w})")
    return r, w


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """Rank ``rank``'s share: items rank, rank + world_size, ... (every item goes to exactly one rank)."""
    return list(items[rank::world_size])


def is_complete(path: Path) -> bool:
    """Whether ``path`` holds a finished, readable image (atomic writes make existence nearly enough)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    if path.suffix in (".npz", ".dcm"):  # written atomically; ITK does not read DICOM-SEG
        return True
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    return True


def probabilities_path(label_path: Path) -> Path:
    name = label_path.name
    for suffix in (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha", ".mhd", ".dcm"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return label_path.with_name(f"{name}_probabilities.npz")


def write_probabilities(probs: Probabilities, labels: Volume, path: Path) -> Path:
    """Save class probabilities (float16) in the label file's own array order, atomically (.npz).

    ``probabilities[c]`` has the shape of ``SimpleITK.GetArrayFromImage`` of the written label
    file; ``classes`` names the channels.
    """
    codes = labels.source.axis_codes if labels.source is not None else None
    arr = probs.array
    if codes is not None:
        arr = np.stack([reorient(labels.with_array(ch), codes).array for ch in arr])
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, probabilities=arr, classes=np.array(probs.classes), stage=probs.stage)
    return path


def predict_file(image: str | Path, output: str | Path, run: LoadedRun | Sequence[LoadedRun], *,
                 device=None, tta: bool = False, save_probabilities: bool = False, case_id: str = "case",
                 precision: str | None = None, statistics: bool = False) -> Path:
    """Predict one CT (file or DICOM folder) and write its labels (and probabilities) atomically.

    ``statistics``: also write ``kitseg.stats.case_statistics`` as ``<case>.json`` beside the labels.
    The format follows ``output``'s name (``kitseg.export.write_labels``): ``.nii.gz`` and other image
    endings, ``.seg.nrrd`` (3D Slicer) or ``.dcm`` (DICOM-SEG; ``image`` must be a DICOM series folder).
    """
    output = Path(output)
    remove_partials(output.parent, output.name)
    try:
        res = predict_case(image, run, device, tta=tta, return_probabilities=save_probabilities, case_id=case_id,
                           precision=precision)
    except (MemoryError, RuntimeError) as exc:
        if not _is_out_of_memory(exc):
            raise
        raise KitsegError(f"not enough memory to segment {_image_size(image)}({_memory_detail(exc)}); close other "
                          "programs or use a machine with more memory", image) from None
    labels, probs = res if isinstance(res, tuple) else (res, None)
    if probs is not None:
        remove_partials(probabilities_path(output).parent, probabilities_path(output).name)
        write_probabilities(probs, labels, probabilities_path(output))
    if statistics:
        _write_statistics(labels, image, run, case_id, output)
    first = run if isinstance(run, LoadedRun) else run[0]
    write_labels(labels, output, spec=first.dataset, source=image if isinstance(image, (str, Path)) else None,
                 recipe=first.recipe.name)  # last: its presence marks the case as done
    return output


def _write_statistics(labels: Volume, image, run, case_id: str, output: Path) -> None:
    from kitseg.stats import case_statistics, statistics_path, write_statistics

    first = run if isinstance(run, LoadedRun) else run[0]
    remove_partials(statistics_path(output).parent, statistics_path(output).name)
    write_statistics(case_statistics(labels, image, first.dataset, case_id), statistics_path(output))


# How numpy (MemoryError), torch and ITK (RuntimeError) report a failed allocation.
_OOM_MARKS = ("can't allocate memory", "not enough memory", "out of memory", "Failed to allocate memory")


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(m in str(exc) for m in _OOM_MARKS)


def _memory_detail(exc: BaseException) -> str:
    """The allocation that failed, in one line: numpy and torch say how many bytes, ITK does not."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        for key in ("Unable to allocate", "DefaultCPUAllocator", "Tried to allocate", "Failed to allocate"):
            if key in ln:
                return ln[ln.index(key):][:200]
    return lines[0][:200] if lines else type(exc).__name__


def _image_size(image) -> str:
    """ "the 512 x 512 x 300 image (78.6 M voxels) " from the file header or the Volume, or "" if unknown."""
    if isinstance(image, Volume):
        size = image.shape[::-1]
    else:
        try:
            size, _ = read_header(Path(image))
        except (KitsegError, TypeError):  # a DICOM folder or an in-memory image: the detail has to do
            return ""
    voxels = float(np.prod(size, dtype=np.float64))
    return (f"the {' x '.join(map(str, size))} image ({voxels / 1e6:.1f} M voxels, {voxels * 4 / 2**20:.0f} MiB per "
            "float32 copy; segmenting holds several) ")


def predict_folder(inputs: str | Path, out_dir: str | Path, run: LoadedRun | Sequence[LoadedRun], *, device=None,
                   tta: bool = False, save_probabilities: bool = False, rank: int | None = None,
                   world_size: int | None = None, progress: bool | None = None,
                   precision: str | None = None, statistics: bool = False,
                   output_format: str = "nifti") -> FolderSummary:
    """Predict every CT under ``inputs`` into ``out_dir/<case_id>.nii.gz`` (see the module docstring).

    ``output_format``: "nifti", "nrrd" (``<case_id>.seg.nrrd``) or "dicom-seg" (``<case_id>.dcm``).
    """
    rank, world_size = rank_and_world(rank, world_size)
    out_dir = Path(out_dir)
    cases = find_images(inputs)
    ids = [c for c, _ in cases]
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise KitsegError(f"several inputs have the case id {dupes[0]!r}; their outputs would collide", inputs)
    mine = shard(cases, rank, world_size)
    summary = FolderSummary(rank=rank, world_size=world_size)
    show = sys.stderr.isatty() if progress is None else progress
    from kitseg.progress import make_progress

    with make_progress(show, eta=False) as bar:
        task = bar.add_task("predict", total=len(mine))
        for case_id, path in mine:
            bar.update(task, description=f"predict {case_id}")
            out = out_dir / f"{case_id}{FORMATS[output_format]}"
            summary.cases.append(_one(case_id, path, out, run, device, tta, save_probabilities, precision,
                                      statistics))
            bar.advance(task)
    return summary


def _one(case_id, path, out, run, device, tta, save_probabilities, precision=None, statistics=False) -> CaseResult:
    from kitseg.stats import statistics_path

    row = dict(case_id=case_id, input=str(path), output=str(out))
    if is_complete(out) and (not save_probabilities or is_complete(probabilities_path(out))) and (
            not statistics or statistics_path(out).is_file()):
        return CaseResult(status="skipped", **row)
    t0 = time.perf_counter()
    try:
        predict_file(path, out, run, device=device, tta=tta, save_probabilities=save_probabilities, case_id=case_id,
                     precision=precision, statistics=statistics)
    except KitsegError as exc:
        log.error("%s: %s", case_id, exc)
        return CaseResult(status="failed", message=str(exc), seconds=time.perf_counter() - t0, **row)
    except (RuntimeError, ValueError, MemoryError, OSError) as exc:  # a failure of this case only
        log.exception("%s: prediction failed", case_id)
        return CaseResult(status="failed", message=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0,
                          **row)
    return CaseResult(status="done", seconds=time.perf_counter() - t0, **row)


__all__ = ["CaseResult", "FolderSummary", "is_complete", "predict_file", "predict_folder", "probabilities_path",
           "rank_and_world", "shard", "write_probabilities"]
