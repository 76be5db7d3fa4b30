"""A trained run in memory: recipe, label set, fingerprint and each stage's models (``LoadedRun``).

Made by ``kitseg.stages.run_folder.load_run`` from a run folder, or by ``kitseg.stages.model_file.load_model``
from a ``kitseg export`` file; ``kitseg.inference`` predicts with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kitseg.datasets import DatasetSpec
from kitseg.errors import KitsegError
from kitseg.preprocessing.records import Fingerprint
from kitseg.recipes.schema import Recipe
from kitseg.training_data import TrainingData


@dataclass(frozen=True, eq=False)
class LoadedRun:
    """Everything inference needs from a run: ``models[stage name]`` is the stage's ensemble."""

    recipe: Recipe
    dataset: DatasetSpec
    fingerprint: Fingerprint | None
    models: dict[str, list[nn.Module]]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    run_dir: Path | None = None
    # what the models were trained on (``training_data.json``, a model file's card); None: not recorded
    training_data: TrainingData | None = None

    def __post_init__(self):
        missing = [s.name for s in self.recipe.stages if not self.models.get(s.name)]
        if missing:
            raise KitsegError(f"run has no trained model for stage(s) {', '.join(missing)}", self.run_dir)

    def describe(self) -> str:
        folds = ", ".join(f"{s}: {len(m)} model(s)" for s, m in self.models.items())
        return f"recipe {self.recipe.name} ({folds}) on {self.device}"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``"cpu"``, ``"cuda"`` (under torchrun: ``cuda:$LOCAL_RANK``) or an explicit ``"cuda:1"``."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise KitsegError("--device cuda asked for, but this torch build sees no CUDA GPU; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return device


__all__ = ["LoadedRun", "resolve_device"]
