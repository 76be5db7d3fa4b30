"""The run-folder contract: a trained run folder (or ``kitseg export`` model file) loaded for inference.

The run folder is written by ``kitseg train`` (CONTRACTS: ``recipe.json``, ``dataset.json``,
``fingerprint.json``, ``<stage>/fold_<k>/checkpoint_best.pt``). ``load_run`` reads it once; the
result serves any number of cases (``predict_case``, ``predict_folder``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from kitseg.datasets import PRESETS, DatasetSpec
from kitseg.errors import KitsegError
from kitseg.preprocessing.fingerprint import read_fingerprint
from kitseg.recipes.schema import Recipe
from kitseg.stages.checkpoint import checkpoint_paths, load_stage_models
from kitseg.stages.loaded_run import LoadedRun, resolve_device
from kitseg.stages.model_file import load_model
from kitseg.training_data import from_run

log = logging.getLogger(__name__)


def _read_json_model(path: Path, model, what: str):
    if not path.is_file():
        raise KitsegError(f"the run folder has no {path.name} ({what}); is it a kitseg run folder?", path.parent)
    try:
        return model.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError) as exc:
        raise KitsegError(f"not a valid {what} ({str(exc).splitlines()[0]})", path) from None


def _read_dataset_spec(path: Path, recipe: Recipe) -> DatasetSpec:
    if not path.is_file():
        return PRESETS[recipe.labels]
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return DatasetSpec.model_validate({k: v for k, v in raw.items() if k in DatasetSpec.model_fields})
    except (ValidationError, ValueError) as exc:
        raise KitsegError(f"not a valid dataset.json ({str(exc).splitlines()[0]})", path) from None


def load_run(run_dir: str | Path, device: str | torch.device | None = "cpu", folds: list[int] | None = None,
             which: str = "best") -> LoadedRun:
    """Read a run folder (or a ``kitseg export`` model file): the recipe, label set, fingerprint and every
    stage's fold models.

    ``folds=None``: every fold with a checkpoint (the ensemble). ``which="best"`` falls back to
    ``checkpoint_last.pt`` for a stage whose folds have no best checkpoint yet (said in the log).
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():  # a model file written by `kitseg export`
        return load_model(run_dir, device, folds)
    if not run_dir.is_dir():
        raise KitsegError("no such run folder or model file (give the folder `kitseg train -o` wrote, or a "
                          ".kitseg file)", run_dir)
    dev = resolve_device(device)
    recipe = _read_json_model(run_dir / "recipe.json", Recipe, "recipe")
    dataset = _read_dataset_spec(run_dir / "dataset.json", recipe)
    fp_path = run_dir / "fingerprint.json"
    fingerprint = read_fingerprint(fp_path) if fp_path.is_file() else None
    models: dict[str, list[nn.Module]] = {}
    for stage in recipe.stages:
        use = which
        if which == "best":
            try:
                checkpoint_paths(run_dir, stage.name, folds, "best")
            except KitsegError:  # no best checkpoint (yet); a best that exists but does not load is an error
                use = "last"
                log.warning("stage %s: no checkpoint_best.pt, using checkpoint_last.pt", stage.name)
        models[stage.name] = load_stage_models(run_dir, stage.name, folds, use, dev)
    training = from_run(run_dir, fingerprint.dataset if fingerprint is not None else None)
    return LoadedRun(recipe, dataset, fingerprint, models, dev, run_dir, training)


__all__ = ["LoadedRun", "load_run", "resolve_device"]
