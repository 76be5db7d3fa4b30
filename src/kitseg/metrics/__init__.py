"""Segmentation metrics with the KiTS conventions (docs/EVALUATION.md has the definitions).

- ``overlap.py``: :func:`kits19_case_scores` (official KiTS19), :func:`dice` (KiTS21/23 empty-set
  convention), :func:`detection`, :func:`volumes_ml`.
- ``surface.py``: :func:`region_scores` (Dice, Surface Dice, HD95, MSD per hierarchical region),
  :func:`surface_dice`, :func:`hd95_msd`, :data:`KITS_TOLERANCES_MM`.
- ``evaluate.py``: :func:`evaluate_folder` -> ``metrics.csv`` + ``summary.json`` (:class:`Summary`).
"""

from kitseg.metrics.evaluate import (
    CaseRow,
    Summary,
    evaluate_case,
    evaluate_folder,
    label_files,
    match_cases,
    spec_for,
)
from kitseg.metrics.overlap import detection, dice, kits19_case_scores, volumes_ml
from kitseg.metrics.surface import (
    KITS_TOLERANCES_MM,
    hd95_msd,
    kits_tolerances,
    region_scores,
    surface_dice,
    surface_distances,
)

__all__ = [
    "KITS_TOLERANCES_MM",
    "CaseRow",
    "Summary",
    "detection",
    "dice",
    "evaluate_case",
    "evaluate_folder",
    "hd95_msd",
    "kits19_case_scores",
    "kits_tolerances",
    "label_files",
    "match_cases",
    "region_scores",
    "spec_for",
    "surface_dice",
    "surface_distances",
    "volumes_ml",
]
