"""What a stage puts out at inference: per entry (a box or the whole volume) and on the CT's grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kitseg.preprocessing.records import CaseRecord
from kitseg.recipes.schema import Stage
from kitseg.volume import Volume


@dataclass
class EntryOutput:
    """One box (or the whole volume) of a stage: its record, probabilities and labels on its grid."""

    record: CaseRecord
    probs: np.ndarray  # float32 (K, z, y, x) on the entry's (padded) grid
    labels: np.ndarray  # uint8 dataset labels on the same grid, post-processed


@dataclass
class StageOutput:
    """A stage's entries and their labels back on the CT's grid (what later stages crop around)."""

    stage: Stage
    entries: list[EntryOutput]
    labels: Volume  # uint8 dataset labels on the CT's grid
    seconds: float = 0.0


__all__ = ["EntryOutput", "StageOutput"]
