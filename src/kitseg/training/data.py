"""Batches for the loop: sampler draws in the main process, cutting and augmentation in the main
process (``workers=0``, the default: nothing to crash, fast enough on 2 cores) or in a torch
DataLoader's worker processes (``workers > 0``).

The draws (case, centre, augmentation parameters) always come from the main process's sampler,
and ``make_sample`` is a pure function of a draw, so the batches are the same whatever the number
of workers; only the hard-case weights see their updates a few batches later with workers (the
DataLoader prefetches draws).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kitseg.recipes.schema import Stage, TargetSpec
from kitseg.training.distributed import SINGLE, DistInfo, shard
from kitseg.training.sampling import Draw, Geometry, Sampler, TrainCase, collate, make_sample

Batch = tuple[torch.Tensor, torch.Tensor, list[int]]


class _Samples(Dataset):
    """Map-style dataset whose "indices" are Draws."""

    def __init__(self, cases: list[TrainCase], geometry: Geometry, stage: Stage, targets: dict[str, TargetSpec]):
        self.cases, self.geometry, self.stage, self.targets = cases, geometry, stage, targets

    def __len__(self) -> int:  # not used: batches come from the batch sampler
        return len(self.cases)

    def __getitem__(self, draw: Draw) -> tuple[np.ndarray, np.ndarray, int]:
        x, y = make_sample(self.cases[draw.case], draw, self.geometry, self.stage, self.targets)
        return x, y, draw.case


def _collate_fn(softmax: bool):
    def fn(items: list[tuple[np.ndarray, np.ndarray, int]]) -> Batch:
        x, y = collate([(a, b) for a, b, _ in items], softmax)
        return x, y, [c for _, _, c in items]
    return fn


class _EpochDraws:
    """Batch sampler: ``iterations`` lists of this rank's draws, drawn lazily from the sampler."""

    def __init__(self, sampler: Sampler, iterations: int, batch_size: int, dist: DistInfo):
        self.sampler, self.iterations, self.batch_size, self.dist = sampler, iterations, batch_size, dist

    def __len__(self) -> int:
        return self.iterations

    def __iter__(self) -> Iterator[list[Draw]]:
        for _ in range(self.iterations):
            yield shard(self.sampler.draw(self.batch_size * self.dist.world_size), self.dist)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class TrainBatches:
    """``for x, y, case_indices in batches.epoch():`` gives one epoch of this rank's batches."""

    def __init__(self, sampler: Sampler, stage: Stage, targets: dict[str, TargetSpec], iterations: int,
                 workers: int = 0, dist: DistInfo = SINGLE, pin_memory: bool = False):
        self.sampler, self.stage, self.targets = sampler, stage, targets
        self.draws = _EpochDraws(sampler, iterations, stage.batch_size, dist)
        self.softmax = stage.target.kind == "softmax"
        self.loader = None
        if workers > 0:
            ds = _Samples(sampler.cases, sampler.geometry, stage, targets)
            self.loader = DataLoader(ds, batch_sampler=self.draws, num_workers=workers,
                                     collate_fn=_collate_fn(self.softmax), persistent_workers=True,
                                     worker_init_fn=_worker_init, pin_memory=pin_memory, prefetch_factor=2)

    def epoch(self) -> Iterator[Batch]:
        if self.loader is not None:
            yield from self.loader
            return
        s = self.sampler
        for draws in self.draws:
            samples = [make_sample(s.cases[d.case], d, s.geometry, self.stage, self.targets) for d in draws]
            x, y = collate(samples, self.softmax)
            yield x, y, [d.case for d in draws]


def validation_batches(sampler: Sampler, stage: Stage, targets: dict[str, TargetSpec], per_case: int,
                       dist: DistInfo = SINGLE) -> list[Batch]:
    """This rank's share of the fixed validation patches, cut once and kept in memory."""
    draws = shard(sampler.fixed_draws(per_case), dist)
    softmax = stage.target.kind == "softmax"
    out = []
    for i in range(0, len(draws), stage.batch_size):
        chunk = draws[i : i + stage.batch_size]
        samples = [make_sample(sampler.cases[d.case], d, sampler.geometry, stage, targets) for d in chunk]
        x, y = collate(samples, softmax)
        out.append((x, y, [d.case for d in chunk]))
    return out
