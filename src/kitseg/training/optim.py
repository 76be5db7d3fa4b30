"""Optimizers, learning-rate schedules and early stopping from a stage's recipe.

The papers' settings, all expressible in a recipe:

- Zhang et al. (section 3): Adam, lr 3e-4, constant.
- TuNet (section 3.2): Adam, lr 1e-4, betas (0.9, 0.999), L2 1e-5; lr x 0.2 when the validation
  loss has not improved for 6 epochs (``plateau``); stop after 15 epochs without improvement
  (``early_stopping: 15``).
- 3D FCN-PPM (section III.B.3): SGD, momentum 0.9, weight decay 1e-5, lr 1e-3, ``multistep`` at
  epochs [3, 5, 7] (gamma 0.1, the usual multistep factor; the paper gives none).
- nnU-Net-like baseline (nnU-Net v2 defaults): SGD lr 1e-2, momentum 0.99 Nesterov, weight decay 3e-5,
  ``poly`` with power 0.9.

Schedules step once per epoch (``step_schedule``). Under a time budget (``kitseg train --time-limit``)
a ``poly`` schedule follows the clock as well (``poly_by_progress``): its progress is the larger of
the epochs done and the budget used, so it decays to zero when the budget ends, however fast the
machine steps, instead of stopping half-way when the epochs were planned for a faster one. Weight
decay is the optimizers' L2 term on all parameters (TuNet applies it to the convolution kernels only;
the difference is small).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LRScheduler, MultiStepLR, PolynomialLR, ReduceLROnPlateau

from kitseg.recipes.schema import OptimizerSpec, ScheduleSpec

Scheduler = LRScheduler | ReduceLROnPlateau


def build_optimizer(spec: OptimizerSpec, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                               nesterov=spec.nesterov and spec.momentum > 0)
    cls = torch.optim.AdamW if spec.name == "adamw" else torch.optim.Adam
    return cls(params, lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay)


def poly_by_progress(optimizer: torch.optim.Optimizer, progress: float, power: float) -> float:
    """Set a poly schedule's learning rate for ``progress`` in [0, 1] of the run: base lr x (1 - p)^power
    (the base lr is what ``PolynomialLR`` recorded as ``initial_lr``). Returns the new lr of group 0."""
    p = min(1.0, max(0.0, float(progress)))
    for group in optimizer.param_groups:
        group["lr"] = group.get("initial_lr", group["lr"]) * (1.0 - p) ** power
    return optimizer.param_groups[0]["lr"]


def build_scheduler(spec: ScheduleSpec, optimizer: torch.optim.Optimizer, epochs: int) -> Scheduler | None:
    """The per-epoch schedule, or None for a constant learning rate."""
    if spec.name == "poly":
        return PolynomialLR(optimizer, total_iters=max(1, epochs), power=spec.power)
    if spec.name == "multistep":
        return MultiStepLR(optimizer, milestones=list(spec.milestones), gamma=spec.gamma)
    if spec.name == "plateau":
        return ReduceLROnPlateau(optimizer, mode="min", factor=spec.factor, patience=spec.patience)
    return None


def step_schedule(scheduler: Scheduler | None, val_loss: float) -> None:
    """Advance the schedule at the end of an epoch (plateau watches the validation loss, as TuNet)."""
    if isinstance(scheduler, ReduceLROnPlateau):
        scheduler.step(val_loss)
    elif scheduler is not None:
        scheduler.step()


class EarlyStopping:
    """Stop after ``patience`` epochs without a lower validation loss (TuNet section 3.2: 15)."""

    def __init__(self, patience: int | None):
        self.patience = patience
        self.best = float("inf")
        self.bad_epochs = 0

    def step(self, value: float) -> bool:
        """Record an epoch's value; True when training should stop."""
        if value < self.best:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])
