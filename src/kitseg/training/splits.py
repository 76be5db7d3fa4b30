"""Deterministic k-fold cross-validation splits, stored in ``RUN_DIR/splits.json``.

Case ids are sorted, shuffled with ``numpy.random.default_rng(seed)`` and cut into ``n_splits``
nearly equal parts (fold k validates on part k, trains on the rest): the same ids and seed give
the same splits on any machine. 5 folds by default, as nnU-Net and the papers' cross-validation
(TuNet section 3.2: five-fold).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kitseg._atomic import write_json
from kitseg.errors import KitsegError

SCHEMA_VERSION = 1


class Fold(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: list[str]
    val: list[str]


class Splits(BaseModel):
    """``{"folds": [{"train": [...], "val": [...]}, ...]}`` plus how they were made."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    seed: int = 0
    n_splits: int = 5
    folds: list[Fold] = Field(min_length=1)

    @property
    def case_ids(self) -> list[str]:
        return sorted({c for f in self.folds for c in f.train + f.val})


def make_splits(case_ids: list[str], n_splits: int = 5, seed: int = 0) -> Splits:
    """k-fold splits of ``case_ids``. With fewer cases than folds, one fold per case (leave-one-out)."""
    ids = sorted(set(case_ids))
    if len(ids) < 2:
        raise KitsegError(f"cross-validation needs at least 2 cases with labels, got {len(ids)}")
    if n_splits < 2:
        raise KitsegError(f"n_splits must be >= 2, got {n_splits}")
    k = min(n_splits, len(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = np.array_split(order, k)
    folds = []
    for part in parts:
        val = sorted(ids[i] for i in part)
        folds.append(Fold(train=[c for c in ids if c not in set(val)], val=val))
    return Splits(seed=seed, n_splits=k, folds=folds)


def load_splits(path: str | Path) -> Splits:
    path = Path(path)
    try:
        return Splits.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, ValidationError) as exc:
        raise KitsegError(f"unreadable splits file ({str(exc).splitlines()[0]}); delete it to make new splits",
                          path) from None


def ensure_splits(path: str | Path, case_ids: list[str], n_splits: int = 5, seed: int = 0) -> Splits:
    """Load ``path`` if it exists (checking it covers exactly ``case_ids``), else make and write splits."""
    path = Path(path)
    if path.exists():
        splits = load_splits(path)
        if splits.case_ids != sorted(set(case_ids)):
            missing = sorted(set(case_ids) - set(splits.case_ids))
            extra = sorted(set(splits.case_ids) - set(case_ids))
            raise KitsegError(f"splits do not match the dataset's cases (not in splits: {missing[:5]}, "
                              f"not in dataset: {extra[:5]}); use a new run folder or delete splits.json", path)
        return splits
    splits = make_splits(case_ids, n_splits, seed)
    write_json(path, splits.model_dump())
    return splits
