"""Synthetic cases as Volumes and as KiTS-layout datasets on disk.

``make_case`` returns one procedural case as (image, label) Volumes with the file geometry of
a KiTS19 file (nibabel shows (slices, 512, 512), axis codes I,P,L) or a RAS one. ``make_dataset``
writes ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz`` (atomically), a ``dataset.json``
(the KiTS19 or KiTS23 label set) and ``synth.json`` (what was drawn for each case). Case ``i`` of
a dataset made with seed ``s`` is the same whatever the number of cases.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from kitseg import __version__
from kitseg._atomic import atomic_path, write_text
from kitseg.datasets import KITS19, KITS23, open_dataset
from kitseg.errors import KitsegError
from kitseg.io import read_label, write_volume
from kitseg.synth.procedural import SIZES, CaseSpec, Synthesis, draw_case, synthesize
from kitseg.synth.render import downsample_label, render_from_label
from kitseg.synth.tissues import RENDERER_VERSION
from kitseg.volume import Source, Volume

SCHEMA_VERSION = 1
LAYOUTS = {"kits19": KITS19, "kits23": KITS23}
# File orientation (numpy (z, y, x) order of the file's ITK array, see kitseg.volume.Source).
GEOMETRIES = {"kits19": "LPI", "ras": "SAR"}


class CaseRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    case_id: str
    seed: int
    shape: tuple[int, int, int]  # (z, y, x)
    spacing_mm: tuple[float, float, float]  # (z, y, x)
    noise_sd_hu: float | None = None
    tumors: list[str] = []  # tumor look of each tumor ("clear_cell", "papillary", "chromophobe")
    tumor_diameters_mm: list[float] = []
    cysts: int = 0
    kidneys: int = 2
    source_label: str | None = None  # --from-masks: the label map the image was rendered for
    phase: str = "arterial"  # contrast phase (kitseg.synth.tissues.PHASES)


class SynthRecord(BaseModel):
    """``synth.json``: how a synthetic dataset was made."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    kitseg_version: str = __version__
    # kitseg.synth.tissues.RENDERER_VERSION of the renderer that made the images; None (absent): written
    # before versions were recorded, i.e. by renderer version 1
    renderer_version: int | None = None
    seed: int
    size: str | None
    layout: str
    geometry: str
    from_masks: str | None = None
    downsample: int = 1
    unenhanced: float = 0.0  # share of cases drawn without contrast (--unenhanced)
    cases: list[CaseRecord]


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of a dataset made with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def case_phase(seed: int, unenhanced: float) -> str:
    """The contrast phase of the case with ``seed`` when a share ``unenhanced`` of cases has no contrast
    (its own random stream: the case's anatomy does not depend on ``unenhanced``)."""
    if unenhanced <= 0:
        return "arterial"
    return "unenhanced" if np.random.default_rng([int(seed), 3]).random() < unenhanced else "arterial"


def _check(size: str | None, layout: str, geometry: str) -> None:
    if size is not None and size not in SIZES:
        raise KitsegError(f"unknown size {size!r}; use one of {', '.join(SIZES)}")
    if layout not in LAYOUTS:
        raise KitsegError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if geometry not in GEOMETRIES:
        raise KitsegError(f"unknown geometry {geometry!r}; use one of {', '.join(GEOMETRIES)}")


def to_volumes(syn: Synthesis, spacing, geometry: str = "kits19") -> tuple[Volume, Volume]:
    """Wrap arrays on a canonical grid as (int16 HU image, uint8 label) with a file geometry.

    "kits19": written files show (slices, rows, columns) with axis codes I,P,L in nibabel and a
    zero translation, like the KiTS19 files; "ras": axis codes R,A,S, centred on the scanner axis.
    """
    nz, ny, nx = syn.label.shape
    if geometry == "kits19":
        origin = (0.0, 0.0, -(nz - 1) * spacing[0])  # LPS of canonical voxel 0: file voxel 0 at 0
    else:
        origin = tuple(-(n - 1) * s / 2 for n, s in zip((nx, ny, nz), spacing[::-1]))
    codes = GEOMETRIES[geometry]
    axis_of = {"S": 0, "I": 0, "P": 1, "A": 1, "L": 2, "R": 2}
    source = Source(None, codes, tuple(syn.label.shape[axis_of[c]] for c in codes), "")
    hu = np.rint(np.clip(syn.hu, -1024, 3071)).astype(np.int16)
    image = Volume.from_geometry(hu, spacing=spacing, origin=origin, source=source)
    return image, image.with_array(syn.label)


def make_case(seed: int, size: str = "tiny", layout: str = "kits19", geometry: str = "kits19",
              n_tumors: int | None = None, phase: str = "arterial") -> tuple[Volume, Volume]:
    """One procedural case: (CT image in HU as int16, labels as uint8), deterministic for ``seed``.

    ``layout`` "kits19": labels 0/1/2 (cysts are kidney); "kits23": cysts are label 3.
    ``n_tumors`` fixes the number of tumors (default: drawn, 0-3).
    """
    _check(size, layout, geometry)
    case = draw_case(seed, size, n_tumors, phase)
    syn = synthesize(case, cyst_label=3 if layout == "kits23" else 1)
    return to_volumes(syn, case.grid.spacing, geometry)


def _record(case_id: str, case: CaseSpec) -> CaseRecord:
    looks = case.hu.tumor_looks
    tumors = [les for les in case.lesions if les.kind == "tumor"]
    return CaseRecord(case_id=case_id, seed=case.seed, shape=case.grid.shape, spacing_mm=case.grid.spacing,
                      noise_sd_hu=round(case.noise_sd, 2), tumors=[looks[t.look].kind for t in tumors],
                      tumor_diameters_mm=[round(t.diameter, 1) for t in tumors], cysts=case.n_cysts,
                      kidneys=len(case.kidneys), phase=case.hu.phase)


def _write_procedural(job) -> dict:
    out_dir, case_id, seed, size, layout, geometry, phase = job
    case = draw_case(seed, size, phase=phase)
    syn = synthesize(case, cyst_label=3 if layout == "kits23" else 1)
    image, label = to_volumes(syn, case.grid.spacing, geometry)
    d = Path(out_dir) / case_id
    write_volume(image, d / "imaging.nii.gz")
    write_volume(label, d / "segmentation.nii.gz")
    return _record(case_id, case).model_dump()


def _write_rendered(job) -> dict:
    out_dir, case_id, seed, label_path, layout, downsample, phase = job
    allowed = {0, 1, 2, 3} if layout == "kits23" else {0, 1, 2}
    try:
        label = read_label(label_path, allowed)
    except KitsegError as exc:
        hint = "; label maps with cysts (3) need --layout kits23" if layout == "kits19" else ""
        raise KitsegError(exc.message + hint, label_path) from None
    small = downsample_label(label, downsample)
    image = render_from_label(small, seed, phase=phase)
    d = Path(out_dir) / case_id
    write_volume(image, d / "imaging.nii.gz")
    if downsample == 1:  # the very same file: labels and geometry reproduced exactly
        with atomic_path(d / "segmentation.nii.gz") as tmp:
            shutil.copyfile(label_path, tmp)
    else:
        write_volume(small, d / "segmentation.nii.gz")
    return CaseRecord(case_id=case_id, seed=seed, shape=small.shape, spacing_mm=small.spacing,
                      source_label=str(label_path), phase=phase).model_dump()


def make_dataset(out_dir: str | Path, cases: int | None = None, seed: int = 0, size: str = "small",
                 layout: str = "kits19", from_masks: str | Path | None = None, progress: bool = True,
                 geometry: str = "kits19", downsample: int = 1, workers: int | None = None,
                 unenhanced: float = 0.0) -> list[Path]:
    """Write a synthetic KiTS-layout dataset to ``out_dir``; return the case folders.

    Procedural (default): ``cases`` cases (default 10) of ``size`` "tiny" (32x64x64), "small"
    (64x128x128) or "full" (512x512 slices, KiTS19 spacings). ``from_masks``: a KiTS-layout
    folder of segmentation files (e.g. the KiTS19 labels); one CT is rendered per label map (the
    first ``cases`` of them, default all) and written with a copy of the label map.
    ``downsample`` (from_masks only) divides the in-plane size by an integer factor, the labels
    by majority vote over each block (see ``downsample_label``). ``workers``: processes (default:
    up to 2, one for tiny cases). ``unenhanced``: the share of cases (drawn per case, ``case_phase``)
    rendered without contrast; the others are late arterial.
    """
    _check(size, layout, geometry)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise KitsegError("exists and is not a folder", out)
    if cases is not None and cases < 1:
        raise KitsegError(f"--cases must be at least 1, got {cases}")
    if downsample < 1:
        raise KitsegError(f"--downsample must be at least 1, got {downsample}")
    if not 0.0 <= unenhanced <= 1.0:
        raise KitsegError(f"--unenhanced is a share of the cases, from 0 to 1; got {unenhanced}")
    if from_masks is not None:
        ds = open_dataset(from_masks)
        sources = [c for c in ds.cases if c.label is not None][: cases or None]
        if not sources:
            raise KitsegError("no segmentation files found", from_masks)
        jobs = [(str(out), c.case_id, case_seed(seed, i), str(c.label), layout, downsample,
                 case_phase(case_seed(seed, i), unenhanced)) for i, c in enumerate(sources)]
        fn, heavy = _write_rendered, True
    else:
        n = 10 if cases is None else cases
        jobs = [(str(out), f"case_{i:05d}", case_seed(seed, i), size, layout, geometry,
                 case_phase(case_seed(seed, i), unenhanced)) for i in range(n)]
        fn, heavy = _write_procedural, size != "tiny"
    out.mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = min(2, os.cpu_count() or 1, len(jobs)) if heavy else 1
    records = _run(fn, jobs, workers, progress)
    spec = LAYOUTS[layout]
    write_text(out / "dataset.json", spec.model_dump_json(indent=2) + "\n")
    rec = SynthRecord(renderer_version=RENDERER_VERSION, seed=seed, size=None if from_masks else size,
                      layout=layout, geometry=geometry,
                      from_masks=None if from_masks is None else str(from_masks), downsample=downsample,
                      unenhanced=unenhanced,
                      cases=[CaseRecord(**r) for r in records])
    write_text(out / "synth.json", rec.model_dump_json(indent=2) + "\n")
    return [out / r["case_id"] for r in records]


def _run(fn, jobs, workers: int, progress: bool) -> list[dict]:
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("synthesizing cases", total=len(jobs))
        if workers <= 1:
            results = []
            for job in jobs:
                results.append(fn(job))
                bar.advance(task)
            return results
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(fn, job) for job in jobs]
            results = []
            for f in futures:
                results.append(f.result())
                bar.advance(task)
            return results
