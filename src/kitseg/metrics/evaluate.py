"""Evaluate a folder of predicted label maps against ground truth: ``metrics.csv`` + typed ``summary.json``.

Files are matched by case id: ``case_XXXXX.nii.gz`` (any image ending) or ``case_XXXXX/segmentation.nii.gz``
in either folder; the ground truth may also be an nnU-Net-layout dataset (``labelsTr``). Every case is
read with :func:`kitseg.io.read_label` (labels checked against the label set) and the grids are
compared with :func:`kitseg.io.check_same_grid`; a mismatch or a case present on one side only
stops the evaluation with a :class:`KitsegError` naming the file.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from kitseg import __version__
from kitseg._atomic import write_text
from kitseg.datasets import KITS19, PRESETS, DatasetSpec, case_id_of, open_dataset, read_spec
from kitseg.errors import KitsegError
from kitseg.io import check_same_grid, is_image_file, read_label
from kitseg.metrics.overlap import detection, kits19_case_scores, volumes_ml
from kitseg.metrics.surface import kits_tolerances, region_scores
from kitseg.volume import Volume, bbox

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Kits19Scores(_Strict):
    kidney_dice: float
    tumor_dice: float
    composite: float


class RegionScores(_Strict):
    dice: float
    surface_dice: float | None = None
    hd95_mm: float | None = None
    msd_mm: float | None = None


class DetectionScores(_Strict):
    gt_tumors: int
    pred_tumors: int
    detected_tumors: int
    missed_tumors: int
    false_positive_tumors: int
    sensitivity: float | None
    specificity: float | None
    outcome: Literal["TP", "FN", "FP", "TN"]


class CaseRow(_Strict):
    case_id: str
    prediction: str
    ground_truth: str
    spacing_mm: tuple[float, float, float]
    kits19: Kits19Scores | None = None
    regions: dict[str, RegionScores]
    detection: DetectionScores | None = None
    pred_volumes_ml: dict[str, float]
    gt_volumes_ml: dict[str, float]

    def flat(self) -> dict[str, float | int | str | None]:
        """One CSV row: the column names of ``metrics.csv``."""
        row: dict[str, float | int | str | None] = {"case_id": self.case_id}
        if self.kits19 is not None:
            row.update({f"kits19_{k}": v for k, v in self.kits19.model_dump().items()})
        for name, scores in self.regions.items():
            row.update({f"{name}_{k}": v for k, v in scores.model_dump().items()})
        if self.detection is not None:
            row.update({f"tumor_detection_{k}": v for k, v in self.detection.model_dump().items()})
        row.update({f"pred_{k}": v for k, v in self.pred_volumes_ml.items()})
        row.update({f"gt_{k}": v for k, v in self.gt_volumes_ml.items()})
        return row


class DetectionSummary(_Strict):
    gt_tumors: int
    detected_tumors: int
    missed_tumors: int
    false_positive_tumors: int
    lesion_sensitivity: float | None  # detected / GT tumors over all cases
    tp_cases: int
    fn_cases: int
    fp_cases: int
    tn_cases: int
    case_sensitivity: float | None  # TP / (TP + FN)
    case_specificity: float | None  # TN / (TN + FP); None without negative cases


class Summary(_Strict):
    """Contents of ``summary.json``: settings, per-case rows and per-metric means and medians."""

    schema_version: int = SCHEMA_VERSION
    kitseg_version: str = __version__
    label_set: str
    labels: dict[str, int]
    regions: dict[str, list[int]]
    surface_dice_tolerances_mm: dict[str, float]
    prediction_dir: str
    ground_truth_dir: str
    n_cases: int
    missing_predictions: list[str]
    mean: dict[str, float | None]
    median: dict[str, float | None]
    n_defined: dict[str, int]  # cases where the metric is defined (HD95 is not when a mask is empty)
    detection: DetectionSummary | None = None
    cases: list[CaseRow]

    @classmethod
    def load(cls, path: str | Path) -> Summary:
        try:
            return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KitsegError(f"not a kitseg summary.json ({exc})", path) from None


# ---------------------------------------------------------------------------------------------
# Finding files
# ---------------------------------------------------------------------------------------------
def label_files(folder: str | Path) -> dict[str, Path]:
    """Case id -> label file in ``folder``: ``case_XXXXX.nii.gz``-like files, ``case_XXXXX/segmentation.*``
    folders, or an nnU-Net/MSD dataset (``labelsTr``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KitsegError("no such folder", folder)
    found: dict[str, Path] = {}

    def add(cid: str, path: Path) -> None:
        if cid in found:
            raise KitsegError(f"two files for case {cid}: {found[cid]} and {path}; keep one", folder)
        found[cid] = path

    if (folder / "labelsTr").is_dir():
        for case in open_dataset(folder).cases:
            if case.label is not None:
                add(case.case_id, case.label)
        return found
    for p in sorted(folder.iterdir()):
        if p.is_file() and is_image_file(p) and not p.name.startswith("."):
            add(case_id_of(p), p)
        elif p.is_dir():
            seg = next((p / f"segmentation{e}" for e in (".nii.gz", ".nii", ".nrrd", ".mha")
                        if (p / f"segmentation{e}").exists()), None)
            if seg is not None:
                add(p.name, seg)
    return found


def spec_for(gt_dir: str | Path, labels: str | None = None) -> DatasetSpec:
    """The label set: ``labels`` preset (kits19/kits21/kits23), else the GT's dataset.json, else KiTS19."""
    if labels is not None:
        if labels not in PRESETS:
            raise KitsegError(f"unknown label set {labels!r}; use one of {', '.join(PRESETS)}")
        return PRESETS[labels]
    gt_dir = Path(gt_dir)
    return read_spec(gt_dir)[0] if (gt_dir / "dataset.json").exists() else KITS19


def match_cases(pred_dir: str | Path, gt_dir: str | Path,
                allow_missing: bool = False) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pair predictions with ground truth by case id: ([(case_id, pred, gt)], GT case ids without prediction)."""
    preds, gts = label_files(pred_dir), label_files(gt_dir)
    if not preds:
        raise KitsegError("no prediction files found (expected case_XXXXX.nii.gz or case_XXXXX/segmentation.nii.gz)",
                          pred_dir)
    for cid, path in preds.items():
        if cid not in gts:
            raise KitsegError(f"no ground truth for case {cid} in {gt_dir}", path)
    missing = sorted(set(gts) - set(preds))
    if missing and not allow_missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise KitsegError(f"{len(missing)} ground-truth case(s) have no prediction ({shown}); add them, or pass "
                          "--allow-missing to evaluate only the predicted cases", pred_dir)
    return [(cid, preds[cid], gts[cid]) for cid in sorted(preds)], missing


# ---------------------------------------------------------------------------------------------
# One case, a folder
# ---------------------------------------------------------------------------------------------
def is_kits19_like(spec: DatasetSpec) -> bool:
    return spec.label_values == {0, 1, 2}


def evaluate_case(pred: Volume, gt: Volume, spec: DatasetSpec = KITS19, tolerances: dict[str, float] | None = None,
                  case_id: str = "case", distances: bool = True) -> CaseRow:
    """All metrics of one case (label Volumes on the same grid)."""
    check_same_grid(gt, pred, f"case {case_id} ground truth and prediction")
    tolerances = kits_tolerances(list(spec.regions)) if tolerances is None else tolerances
    box = bbox((pred.array > 0) | (gt.array > 0), margin=1)  # exact: every metric ignores background
    p, g = (pred.array[box], gt.array[box]) if box is not None else (pred.array, gt.array)
    regions = region_scores(p, g, gt.spacing, spec.regions, tolerances, distances=distances)
    tumor = spec.labels.get("tumor")
    names = {k: v for k, v in spec.labels.items() if v > 0}
    return CaseRow(
        case_id=case_id,
        prediction=str(pred.source.path) if pred.source and pred.source.path else "",
        ground_truth=str(gt.source.path) if gt.source and gt.source.path else "",
        spacing_mm=gt.spacing,
        kits19=Kits19Scores(**kits19_case_scores(p, g)) if is_kits19_like(spec) else None,
        regions={k: RegionScores(**v) for k, v in regions.items()},
        detection=(DetectionScores(**detection(p, g, (tumor,), voxel_ml=gt.voxel_volume_ml))
                   if tumor is not None else None),
        pred_volumes_ml=volumes_ml(p, pred.voxel_volume_ml, names),
        gt_volumes_ml=volumes_ml(g, gt.voxel_volume_ml, names),
    )


def _aggregate(rows: list[dict]) -> tuple[dict, dict, dict]:
    keys = [k for k in rows[0] if k != "case_id"] if rows else []
    mean, median, n = {}, {}, {}
    for k in keys:
        vals = [r.get(k) for r in rows]
        nums = [float(v) for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)
                and v is not None and math.isfinite(v)]
        if any(isinstance(v, str) for v in vals):
            continue
        n[k] = len(nums)
        mean[k] = float(np.mean(nums)) if nums else None
        median[k] = float(np.median(nums)) if nums else None
    return mean, median, n


def _detection_summary(rows: list[CaseRow]) -> DetectionSummary | None:
    dets = [r.detection for r in rows if r.detection is not None]
    if not dets:
        return None
    count = {o: sum(d.outcome == o for d in dets) for o in ("TP", "FN", "FP", "TN")}
    gt_t = sum(d.gt_tumors for d in dets)
    return DetectionSummary(
        gt_tumors=gt_t, detected_tumors=sum(d.detected_tumors for d in dets),
        missed_tumors=sum(d.missed_tumors for d in dets),
        false_positive_tumors=sum(d.false_positive_tumors for d in dets),
        lesion_sensitivity=sum(d.detected_tumors for d in dets) / gt_t if gt_t else None,
        tp_cases=count["TP"], fn_cases=count["FN"], fp_cases=count["FP"], tn_cases=count["TN"],
        case_sensitivity=count["TP"] / (count["TP"] + count["FN"]) if count["TP"] + count["FN"] else None,
        case_specificity=count["TN"] / (count["TN"] + count["FP"]) if count["TN"] + count["FP"] else None)


def to_csv(rows: list[CaseRow]) -> str:
    flat = [r.flat() for r in rows]
    columns = list(dict.fromkeys(k for row in flat for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in flat:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return buf.getvalue()


def evaluate_folder(pred_dir: str | Path, gt_dir: str | Path, out_dir: str | Path | None = None,
                    spec: DatasetSpec | None = None, *, tolerances: dict[str, float] | str | None = None,
                    allow_missing: bool = False, distances: bool = True, progress: bool = False) -> Summary:
    """Evaluate every prediction in ``pred_dir`` against ``gt_dir``; write ``metrics.csv`` and
    ``summary.json`` to ``out_dir`` (None: write nothing) and return the :class:`Summary`.

    ``spec``: the label set (None: the GT folder's dataset.json, else KiTS19). ``tolerances``: Surface
    Dice tolerances per region in mm, or "kits21"/"kits23" (default: KiTS23's, mapped to the regions).
    """
    spec = spec_for(gt_dir) if spec is None else spec
    if tolerances is None or isinstance(tolerances, str):
        tolerances = kits_tolerances(list(spec.regions), tolerances or "kits23")
    pairs, missing = match_cases(pred_dir, gt_dir, allow_missing)
    iterator = pairs
    if progress:
        from rich.progress import track
        iterator = track(pairs, description="evaluating", transient=True)
    rows = []
    for cid, pred_path, gt_path in iterator:
        gt = read_label(gt_path, spec.label_values)
        pred = read_label(pred_path, spec.label_values)
        rows.append(evaluate_case(pred, gt, spec, tolerances, cid, distances))
    mean, median, n = _aggregate([r.flat() for r in rows])
    summary = Summary(label_set=spec.name, labels=spec.labels, regions=spec.regions,
                      surface_dice_tolerances_mm=tolerances, prediction_dir=str(pred_dir), ground_truth_dir=str(gt_dir),
                      n_cases=len(rows), missing_predictions=missing, mean=mean, median=median, n_defined=n,
                      detection=_detection_summary(rows), cases=rows)
    if out_dir is not None:
        out = Path(out_dir)
        write_text(out / "metrics.csv", to_csv(rows))
        write_text(out / "summary.json", summary.model_dump_json(indent=2) + "\n")
    return summary
