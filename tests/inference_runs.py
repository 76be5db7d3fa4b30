"""Run folders made by hand for the inference tests: untrained tiny networks saved as kitseg checkpoints.

The layout and checkpoint format are the training contract (CONTRACTS.md): recipe.json,
dataset.json, optional fingerprint.json, <stage>/fold_<k>/checkpoint_best.pt.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from kitseg._atomic import write_json
from kitseg.datasets import PRESETS
from kitseg.nets import build_network
from kitseg.recipes import validate_recipe
from kitseg.recipes.schema import Recipe
from kitseg.stages.checkpoint import save_checkpoint

GEOMETRY_RECIPE = """
name: geometry_cascade
title: untrained two-stage cascade for geometry tests
paper: tests
stages:
  - name: localize
    network: {name: unet3d, params: {base_features: 2, pool_counts: 2}}
    target: {kind: softmax, classes: {kidney: [1, 2]}}
    preprocess: {target_spacing: [16.0, 16.0, 16.0], intensity: {scheme: volume_zscore}}
    patch_size: [16, 32, 32]
    inference: {overlap: 0.25}
    postprocess: [{op: largest_components, params: {n: 2}}]
  - name: segment
    network: {name: resunet_ds_zhang, params: {base_features: 2, pool_counts: [1, 2, 2]}}
    inputs: [ct, "mask:localize"]
    roi_from: localize
    target: {kind: softmax, classes: {kidney: [1], tumor: [2]}}
    preprocess:
      target_spacing: [8.0, 8.0, 8.0]
      roi: {margin_mm: 10.0, kidneys: each}
      intensity: {scheme: volume_zscore}
    patch_size: [16, 32, 32]
    inference: {overlap: 0.0}
final: {op: argmax, stage: segment}
"""


def recipe_from_yaml(text: str) -> Recipe:
    return validate_recipe(yaml.safe_load(text))


def untrained_models(recipe: Recipe, seed: int = 0, folds: int = 1) -> dict[str, list[torch.nn.Module]]:
    torch.manual_seed(seed)
    return {s.name: [build_network(s.network.name, s.in_channels, s.target.out_channels, **s.network.params).eval()
                     for _ in range(folds)] for s in recipe.stages}


def write_run(run_dir: Path, recipe: Recipe, models: dict[str, list[torch.nn.Module]] | None = None,
              seed: int = 0) -> Path:
    """Write a run folder holding ``models`` (default: untrained ones) as fold checkpoints."""
    run_dir = Path(run_dir)
    models = models or untrained_models(recipe, seed)
    write_json(run_dir / "recipe.json", recipe.model_dump(mode="json"))
    write_json(run_dir / "dataset.json", PRESETS[recipe.labels].model_dump(mode="json"))
    for stage in recipe.stages:
        for fold, model in enumerate(models[stage.name]):
            ckpt = {"format": "kitseg-checkpoint", "version": 1, "stage": stage.name, "fold": fold, "epoch": 1,
                    "network": {"name": stage.network.name, "in_channels": stage.in_channels,
                                "out_channels": stage.target.out_channels, "params": dict(stage.network.params)},
                    "model": model.state_dict()}
            save_checkpoint(run_dir / stage.name / f"fold_{fold}" / "checkpoint_best.pt", ckpt)
    return run_dir
