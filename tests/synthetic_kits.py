"""Tiny synthetic KiTS19-layout datasets and a tiny two-stage recipe for the training tests.

Each case: noise around -100 HU, two bright ellipsoid "kidneys" (label 1) and a brighter
ellipsoid "tumor" (label 2) in the left one, written with kitseg.io.write_volume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kitseg.io import write_volume
from kitseg.volume import Volume

TINY_RECIPE = """
name: tiny_cascade
title: tiny two-stage cascade for tests
paper: tests
stages:
  - name: localize
    network: {name: unet3d, params: {base_features: 4, pool_counts: 2}}
    inputs: [ct]
    target: {kind: softmax, classes: {kidney: [1, 2]}}
    preprocess: {target_spacing: [6.0, 3.0, 3.0], intensity: {scheme: volume_zscore}}
    patch_size: [8, 16, 16]
    batch_size: 2
    epochs: 2
    iterations_per_epoch: 2
    loss: {name: dice_ce}
    optimizer: {name: adam, lr: 1.0e-3}
    sampler: {name: patch, foreground_fraction: 0.5}
    augmentation: {rotate_deg: 5.0, flip_axes: [2], probability: 0.5, intensity_scale: 0.1}
  - name: segment
    network: {name: resunet_ds_zhang, params: {base_features: 4, pool_counts: [1, 2, 2]}}
    inputs: [ct, "mask:localize"]
    roi_from: localize
    target: {kind: softmax, classes: {kidney: [1], tumor: [2]}}
    preprocess: {roi: {margin_mm: 4.0, kidneys: each}, intensity: {scheme: volume_zscore}}
    patch_size: [8, 16, 16]
    batch_size: 2
    epochs: 2
    iterations_per_epoch: 2
    loss: {name: dice_ce, deep_supervision: {weights: halving}}
    optimizer: {name: adam, lr: 1.0e-3}
    sampler: {name: patch, foreground_fraction: 0.5, hard_case: true}
    augmentation: {flip_axes: [2], gaussian_blur: 0.3, intensity_shift: 0.1, probability: 0.5}
final: {op: argmax, stage: segment}
"""


def make_case(shape=(16, 32, 32), seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    img = rng.normal(-100.0, 20.0, shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    sz, sy, sx = shape
    for side in (-1, 1):
        c = (sz / 2 + rng.uniform(-1, 1), sy / 2 + rng.uniform(-2, 2), sx / 2 + side * sx / 4)
        r = np.array([sz * 0.2, sy * 0.25, sx * 0.15]) * rng.uniform(0.85, 1.15)
        inside = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1
        lab[inside] = 1
        img[inside] += 250.0
        if side == 1:
            t = ((z - c[0]) / (r[0] * 0.5)) ** 2 + ((y - c[1]) / (r[1] * 0.5)) ** 2 + \
                ((x - c[2] - r[2] * 0.3) / (r[2] * 0.6)) ** 2 <= 1
            lab[t] = 2
            img[t] += 100.0
    return img, lab


def make_kits_dataset(root: Path, n: int = 4, shape=(16, 32, 32), spacing=(3.0, 1.5, 1.5), seed: int = 0) -> Path:
    root = Path(root)
    for i in range(n):
        img, lab = make_case(shape, seed + i)
        vol = Volume.from_geometry(img, spacing=spacing)
        write_volume(vol, root / f"case_{i:05d}" / "imaging.nii.gz")
        write_volume(vol.with_array(lab), root / f"case_{i:05d}" / "segmentation.nii.gz")
    return root


def write_tiny_recipe(path: Path) -> Path:
    path = Path(path)
    path.write_text(TINY_RECIPE)
    return path
