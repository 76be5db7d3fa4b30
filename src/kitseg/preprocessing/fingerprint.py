"""Dataset fingerprint: geometry, intensity statistics and class statistics (``fingerprint.json``).

As nnU-Net's fingerprint (and Zhang et al. 2.3's "statistics collecting step"): per-case shape,
spacing and label counts; median spacing and shape; intensity statistics of three voxel sets
(foreground = label > 0; the whole image; the kidney ROI: the boxes a stage's ``RoiSpec`` draws
around the ground truth, the very voxels that stage normalizes, or without one the kidneys' box
grown by ``roi_margin_mm``); kidney bounding-box sizes in mm.
Means and stds are exact (Chan's parallel update in float64); percentiles come from a
deterministic sample of at most ``samples_per_case`` voxels per case (seeded by ``seed`` and the
case's index, so the result does not depend on the number of workers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cc3d
import numpy as np

from kitseg._atomic import write_text
from kitseg.datasets import Case, Dataset, DatasetSpec
from kitseg.errors import KitsegError
from kitseg.preprocessing.crop import bbox_from_mask, kidney_boxes, label_counts
from kitseg.preprocessing.progress import progress_map
from kitseg.preprocessing.records import HIST_BINS, HIST_LOW, CaseFingerprint, Fingerprint, IntensityStats, dump_json
from kitseg.preprocessing.spec import PreprocessSpec, RoiSpec

REGIONS = ("foreground", "image", "roi")
PERCENTILES = (0.05, 0.5, 99.5, 99.95)
_CHUNK = 1 << 22  # voxels per statistics chunk


@dataclass
class _Acc:
    """Running statistics of one voxel set: count, mean, M2, min, max, histogram, samples."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: float = np.inf
    hi: float = -np.inf
    hist: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.int64))
    samples: list = field(default_factory=list)

    def add(self, values: np.ndarray) -> None:
        for i in range(0, values.size, _CHUNK):
            self._add(values[i:i + _CHUNK])

    def _add(self, v: np.ndarray) -> None:
        n = v.size
        if n == 0:
            return
        mean = float(v.mean(dtype=np.float64))
        m2 = float(np.square(v - mean, dtype=np.float64).sum())
        self.merge(_Acc(n, mean, m2, float(v.min()), float(v.max())), samples=False)
        bins = np.clip(np.rint(v), HIST_LOW, HIST_LOW + HIST_BINS - 1).astype(np.int64) - HIST_LOW
        self.hist += np.bincount(bins, minlength=HIST_BINS)

    def merge(self, other: _Acc, samples: bool = True) -> None:
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.mean += delta * other.n / n
        self.n = n
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        if samples:
            self.hist += other.hist
            self.samples.extend(other.samples)

    def stats(self) -> IntensityStats:
        s = np.concatenate(self.samples) if self.samples else np.zeros(1)
        p = np.percentile(s.astype(np.float64), PERCENTILES)
        return IntensityStats(n_voxels=self.n, mean=self.mean, std=float(np.sqrt(self.m2 / self.n)),
                              min=self.lo, max=self.hi, p00_05=float(p[0]), p00_5=float(p[1]),
                              p99_5=float(p[2]), p99_95=float(p[3]), histogram=[int(c) for c in self.hist])


def _sample(values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    if values.size <= k:
        return values.astype(np.float32)
    idx = np.sort(rng.choice(values.size, size=k, replace=False))
    return values[idx].astype(np.float32)


def _bbox_mm(box, spacing) -> tuple[float, float, float]:
    return tuple(float((s.stop - s.start) * sp) for s, sp in zip(box, spacing))  # type: ignore[return-value]


def case_fingerprint(case: Case, spec: DatasetSpec, index: int = 0, samples_per_case: int = 10000,
                     roi_margin_mm: float = 0.0, seed: int = 0, roi_spec: RoiSpec | None = None
                     ) -> tuple[CaseFingerprint, dict[str, _Acc]]:
    """The fingerprint of one case and its intensity accumulators per region."""
    image, label = case.load(spec, need_image=False)
    ref = image if image is not None else label
    names = {v: k for k, v in spec.labels.items()}
    cf = CaseFingerprint(case_id=case.case_id, shape=ref.shape, spacing=ref.spacing, axis_codes=ref.axis_codes,
                         has_image=image is not None)
    fg = roi = None
    if label is not None:
        counts = label_counts(label.array, spec.max_label + 1)
        cf.label_voxels = {names.get(v, str(v)): c for v, c in enumerate(counts)}
        fg = label.array > 0
        if fg.any():
            box = bbox_from_mask(fg, label.spacing)
            cf.kidney_bbox_mm = _bbox_mm(box, label.spacing)
            roi = roi_region(label.array, label.spacing, roi_spec, roi_margin_mm)
            comps = cc3d.connected_components(fg[box].view(np.uint8), connectivity=26)  # inside the box: fast
            st = cc3d.statistics(comps)
            order = np.argsort(st["voxel_counts"][1:])[::-1][:2] + 1
            cf.kidney_component_bbox_mm = [_bbox_mm(st["bounding_boxes"][k], label.spacing) for k in order]
    accs: dict[str, _Acc] = {}
    if image is not None:
        rng = np.random.default_rng([seed, index])
        x = image.array
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        regions = {"image": x.reshape(-1)}
        if fg is not None and fg.any():
            regions["foreground"] = x[fg]
            regions["roi"] = np.ascontiguousarray(x[roi]).reshape(-1) if isinstance(roi, tuple) else x[roi]
        for name, values in regions.items():
            acc = _Acc()
            acc.add(values)
            acc.samples.append(_sample(values, samples_per_case, rng))
            accs[name] = acc
    return cf, accs


def roi_region(label: np.ndarray, spacing, roi_spec: RoiSpec | None, margin_mm: float = 0.0):
    """The ROI voxels of one case: a box (slices) or, for several boxes, a boolean mask of their union.

    With ``roi_spec`` the boxes are the ones preprocessing crops (``kidney_boxes`` with the spec's
    margin, kidneys, axes and minimum size), so the statistics describe exactly what is normalized."""
    if roi_spec is None:
        return bbox_from_mask(label > 0, spacing, margin_mm)
    boxes = kidney_boxes(label, spacing, roi_spec.margin_mm, kidneys=roi_spec.kidneys, axes=roi_spec.axes,
                         min_shape=roi_spec.min_voxels(spacing))
    if len(boxes) == 1:
        return tuple(boxes[0])
    mask = np.zeros(label.shape, dtype=bool)
    for b in boxes:
        mask[tuple(b)] = True
    return mask


def _worker(args):
    case, spec, index, samples, margin, seed, roi_spec = args
    return case_fingerprint(case, spec, index, samples, margin, seed, roi_spec)


def compute_fingerprint(dataset: Dataset, workers: int = 2, progress: bool = True, *, samples_per_case: int = 10000,
                        roi_margin_mm: float = 0.0, seed: int = 0, roi_spec: RoiSpec | None = None) -> Fingerprint:
    """Fingerprint a dataset, ``workers`` cases at a time (the result does not depend on ``workers``).

    ``roi_spec``: the ROI rule of the stage that reads the ``"roi"`` statistics (its boxes around the
    ground truth); without it the ROI is the kidneys' box grown by ``roi_margin_mm``."""
    jobs = [(c, dataset.spec, i, samples_per_case, roi_margin_mm, seed, roi_spec) for i, c in enumerate(dataset.cases)]
    parts = progress_map(_worker, jobs, workers=workers, progress=progress, description="fingerprint")
    return merge_fingerprints(dataset.spec.name, parts, samples_per_case=samples_per_case,
                              roi_margin_mm=roi_margin_mm, seed=seed, roi_spec=roi_spec)


def merge_fingerprints(name: str, parts: Sequence[tuple[CaseFingerprint, dict[str, _Acc]]], *,
                       samples_per_case: int, roi_margin_mm: float, seed: int,
                       roi_spec: RoiSpec | None = None) -> Fingerprint:
    cases = [cf for cf, _ in parts]
    if not cases:
        raise KitsegError("cannot fingerprint a dataset without cases")
    spacings = np.array([c.spacing for c in cases])
    shapes = np.array([c.shape for c in cases], dtype=float)
    totals: dict[str, int] = {}
    n_labelled = 0
    for c in cases:
        if c.label_voxels:
            n_labelled += int(np.prod(c.shape))
            for k, v in c.label_voxels.items():
                totals[k] = totals.get(k, 0) + v
    merged = {r: _Acc() for r in REGIONS}
    for _, accs in parts:
        for r, acc in accs.items():
            merged[r].merge(acc)
    boxes = np.array([c.kidney_bbox_mm for c in cases if c.kidney_bbox_mm is not None])
    return Fingerprint(
        dataset=name, n_cases=len(cases), cases=cases,
        median_spacing=tuple(float(v) for v in np.median(spacings, 0)),
        median_shape=tuple(float(v) for v in np.median(shapes, 0)),
        spacing_p10=tuple(float(v) for v in np.percentile(spacings, 10, axis=0)),
        max_extent_mm=tuple(float(v) for v in (shapes * spacings).max(0)),
        class_fractions={k: v / n_labelled for k, v in totals.items()} if n_labelled else {},
        median_kidney_bbox_mm=tuple(float(v) for v in np.median(boxes, 0)) if len(boxes) else None,
        max_kidney_bbox_mm=tuple(float(v) for v in boxes.max(0)) if len(boxes) else None,
        intensity={r: a.stats() for r, a in merged.items() if a.n},
        samples_per_case=samples_per_case, roi_margin_mm=roi_margin_mm, seed=seed, roi=roi_spec)


def median_target_spacing(fp: Fingerprint, threshold: float = 3.0) -> tuple[float, float, float]:
    """nnU-Net's 3d_fullres target spacing: the median spacing, except for very anisotropic data.

    When the coarsest axis's median spacing exceeds ``threshold`` x the finest other and its median
    size is under a third of the smallest other, that axis takes the 10th percentile of its
    spacings (never finer than the other axes), as nnU-Net v2's planner does.
    """
    target = list(fp.median_spacing)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    aniso_spacing = target[worst] > threshold * max(target[i] for i in others)
    aniso_voxels = fp.median_shape[worst] * threshold < min(fp.median_shape[i] for i in others)
    if aniso_spacing and aniso_voxels:
        target[worst] = max(fp.spacing_p10[worst], max(target[i] for i in others) + 1e-5)
    return tuple(float(v) for v in target)  # type: ignore[return-value]


def summarize(fp: Fingerprint) -> str:
    """A few human-readable lines about a fingerprint."""
    def fmt(v):
        return " x ".join(f"{x:.3g}" for x in v)
    lines = [f"{fp.dataset}: {fp.n_cases} cases; median shape {fmt(fp.median_shape)} voxels, median spacing "
             f"{fmt(fp.median_spacing)} mm (z, y, x); largest field of view {fmt(fp.max_extent_mm)} mm"]
    if fp.median_kidney_bbox_mm:
        lines.append(f"kidney box (both kidneys): median {fmt(fp.median_kidney_bbox_mm)} mm, "
                     f"max {fmt(fp.max_kidney_bbox_mm)} mm")
    if fp.class_fractions:
        lines.append("class fractions: " + ", ".join(f"{k} {v:.3%}" for k, v in fp.class_fractions.items()))
    for region, st in fp.intensity.items():
        lines.append(f"{region} intensity: mean {st.mean:.1f}, std {st.std:.1f}, percentiles 0.05/0.5/99.5/99.95 % "
                     f"{st.p00_05:.0f} / {st.p00_5:.0f} / {st.p99_5:.0f} / {st.p99_95:.0f}")
    if not fp.intensity:
        lines.append("no images: intensity statistics not computed")
    return "\n".join(lines)


def roi_statistics_spec(specs: Sequence[PreprocessSpec]) -> RoiSpec | None:
    """The ROI rule the fingerprint's ``"roi"`` statistics are collected with, given a recipe's stages'
    specs in order: that of the first stage that normalizes with them (else the first stage with a ROI),
    so they describe the voxels it normalizes."""
    with_roi = [s for s in specs if s.roi is not None]
    readers = [s for s in with_roi if s.intensity.stats_region == "roi"]
    return (readers or with_roi)[0].roi if (readers or with_roi) else None


def fingerprint_for(dataset: Dataset, path: str | Path, specs: Sequence[PreprocessSpec], *, workers: int = 2,
                    progress: bool = True, seed: int = 0) -> Fingerprint:
    """The dataset's fingerprint for a recipe's stages (``specs``): read from ``path`` when it exists, else
    computed (ROI statistics by ``roi_statistics_spec``) and written there. ``kitseg train`` and
    ``kitseg preprocess --recipe`` both get theirs here."""
    path = Path(path)
    if path.exists():
        return read_fingerprint(path)
    fp = compute_fingerprint(dataset, workers=workers, progress=progress, roi_spec=roi_statistics_spec(specs),
                             seed=seed)
    write_fingerprint(fp, path)
    return fp


def write_fingerprint(fp: Fingerprint, path: str | Path) -> Path:
    path = Path(path)
    write_text(path, dump_json(fp))
    return path


def read_fingerprint(path: str | Path) -> Fingerprint:
    path = Path(path)
    try:
        return Fingerprint.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KitsegError(f"cannot read the fingerprint ({exc.strerror or exc})", path) from None
    except ValueError as exc:
        raise KitsegError(f"not a kitseg fingerprint.json ({str(exc).splitlines()[0]})", path) from None


__all__ = ["Fingerprint", "IntensityStats", "case_fingerprint", "compute_fingerprint", "fingerprint_for",
           "median_target_spacing", "roi_statistics_spec",
           "read_fingerprint", "summarize", "write_fingerprint"]
