"""Overlap metrics, tumor detection and volumes: per-case numbers on uint8 label arrays.

Conventions (docs/EVALUATION.md has the formulas):
- KiTS19 (official ``starter_code/evaluation.py`` of neheller/kits19): kidney = ``label > 0`` (kidney
  including tumor), tumor = ``label > 1``; Dice = 2|X∩Y| / (|X|+|Y|) over the whole volume; composite =
  mean of the two. The official code means to return 0.0 when both masks are empty (its
  ``except ZeroDivisionError`` branches; empty kidney gives (0.0, 0.0)); under numpy the division
  does not raise and yields NaN with a RuntimeWarning instead. We return the intended 0.0. All KiTS19
  cases have a tumor, so the challenge never met the case.
- KiTS21/23 (neheller/kits23 ``evaluation/metrics.py``): both masks empty -> Dice 1, exactly one empty
  -> Dice 0 (:func:`dice`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kitseg.errors import KitsegError
from kitseg.metrics.tumors import tumor_components
from kitseg.volume import bbox


def in_labels(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """``np.isin(labels, values)``, several times faster for a run of consecutive values (KiTS regions)."""
    labels = np.asarray(labels)
    vals = sorted(set(int(v) for v in values))
    if not vals:
        return np.zeros(labels.shape, dtype=bool)
    if vals != list(range(vals[0], vals[-1] + 1)):
        return np.isin(labels, np.asarray(vals))
    if vals[0] == vals[-1]:
        return labels == vals[0]
    return (labels >= vals[0]) & (labels <= vals[-1])


def _same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise KitsegError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean masks with the KiTS21/23 empty-set convention (both empty 1, one empty 0)."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    _same_shape(pred, gt)
    n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    if n_pred == 0 and n_gt == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & gt)) / (n_pred + n_gt)


def _kits19_dice(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """Official KiTS19 Dice; None where the official code hits its ZeroDivisionError branch."""
    denominator = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
    if denominator == 0:
        return None
    return 2.0 * int(np.count_nonzero(pred & gt)) / denominator


def kits19_case_scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """KiTS19 per-case scores exactly as the official evaluation: kidney_dice, tumor_dice, composite.

    kidney = ``label > 0`` (kidney **including** tumor), tumor = ``label > 1``. Both kidney masks
    empty -> (0.0, 0.0); both tumor masks empty -> tumor Dice 0.0 (the official code's stated return
    values; see the module docstring for the NaN it produces under numpy). composite = mean of the two.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    _same_shape(pred, gt)
    kidney = _kits19_dice(pred > 0, gt > 0)
    if kidney is None:
        kidney, tumor = 0.0, 0.0
    else:
        tumor = _kits19_dice(pred > 1, gt > 1)
        tumor = 0.0 if tumor is None else tumor
    return {"kidney_dice": kidney, "tumor_dice": tumor, "composite": (kidney + tumor) / 2.0}


def detection(pred: np.ndarray, gt: np.ndarray, tumor_labels: tuple[int, ...] = (2,),
              connectivity: int = 26, voxel_ml: float | None = None) -> dict[str, float | int | str | None]:
    """Tumor detection for one case, with the tumor definition of :mod:`kitseg.metrics.tumors`.

    Tumors are the ``connectivity``-connected components of ``label in tumor_labels`` of at least
    ``MIN_TUMOR_ML`` (when ``voxel_ml``, the volume of a voxel in ml, is given; else every component).
    - A ground-truth tumor is *detected* when a predicted tumor overlaps it, else *missed*.
    - A predicted tumor that overlaps no ground-truth tumor is a *false-positive tumor*.
    - ``sensitivity`` = detected / ground-truth tumors (None for a case without ground-truth tumor).
    - Case level: the case is positive when its ground truth has a tumor; ``outcome`` is TP (a
      ground-truth tumor detected), FN (every ground-truth tumor missed, even when false-positive
      tumors were predicted elsewhere), FP (no GT tumor, predicted tumor) or TN (neither).
      ``specificity`` is defined for negative cases only: 1.0 for TN, 0.0 for FP, None for positive
      cases. Dataset-level sensitivity/specificity are computed from the counts.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    _same_shape(pred, gt)
    gt_t, pred_t = in_labels(gt, tumor_labels), in_labels(pred, tumor_labels)
    box = bbox(gt_t | pred_t)
    if box is not None:  # label only the box around the tumors
        gt_t, pred_t = gt_t[box], pred_t[box]
    gt_comp, gt_sizes = tumor_components(gt_t, voxel_ml, connectivity)
    pred_comp, pred_sizes = tumor_components(pred_t, voxel_ml, connectivity)
    n_gt, n_pred = gt_sizes.size - 1, pred_sizes.size - 1
    hit_gt = np.unique(gt_comp[pred_comp > 0])
    detected = int(np.count_nonzero(hit_gt))
    hit_pred = np.unique(pred_comp[gt_comp > 0])
    false_pos = n_pred - int(np.count_nonzero(hit_pred))
    positive, predicted = n_gt > 0, n_pred > 0
    outcome = ("TP" if detected else "FN") if positive else ("FP" if predicted else "TN")
    return {
        "gt_tumors": n_gt,
        "pred_tumors": n_pred,
        "detected_tumors": detected,
        "missed_tumors": n_gt - detected,
        "false_positive_tumors": false_pos,
        "sensitivity": detected / n_gt if positive else None,
        "specificity": None if positive else (0.0 if predicted else 1.0),
        "outcome": outcome,
    }


def volumes_ml(labels: np.ndarray, voxel_ml: float, label_names: Mapping[str, int]) -> dict[str, float]:
    """Volume in ml of each labelled structure, plus all foreground together.

    Keys: ``<name>_ml`` for each non-background label (KiTS19: ``kidney_ml`` is kidney tissue
    *without* tumor, ``tumor_ml``) and ``kidney_with_masses_ml`` for all labels > 0 (kidney including
    tumor and cysts). ``voxel_ml`` = product of the spacing in mm / 1000.
    """
    labels = np.asarray(labels)
    out = {f"{name}_ml": int(np.count_nonzero(labels == v)) * voxel_ml for name, v in label_names.items() if v > 0}
    out["kidney_with_masses_ml"] = int(np.count_nonzero(labels)) * voxel_ml
    return out
