"""Tiny synthetic CTs with known content for the preprocessing tests (numpy only, no kitseg.synth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kitseg.io import write_volume
from kitseg.volume import Volume


def ellipsoid(shape, centre, radii) -> np.ndarray:
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in shape)]
    return ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + \
        ((xx - centre[2]) / radii[2]) ** 2 <= 1.0


def make_case(seed: int = 0, shape=(24, 40, 40), spacing=(2.5, 0.8, 0.8)) -> tuple[Volume, Volume]:
    """A small abdomen: air outside a body ellipse (-1000 HU), soft tissue ~40 HU, two kidneys
    (label 1, ~180 HU) on the patient's right (low x) and left (high x), a tumor (label 2, ~90 HU)
    in the left kidney. Integer HU values."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    img = np.full(shape, -1000, dtype=np.int16)
    body = ellipsoid(shape, (z / 2, y / 2, x / 2), (z, y * 0.45, x * 0.48))
    img[body] = 40
    lab = np.zeros(shape, dtype=np.uint8)
    dz = rng.integers(-1, 2)
    right = ellipsoid(shape, (z / 2 + dz, y * 0.55, x * 0.27), (z * 0.3, y * 0.12, x * 0.08))
    left = ellipsoid(shape, (z / 2 - dz, y * 0.55, x * 0.73), (z * 0.3, y * 0.12, x * 0.08))
    tumor = ellipsoid(shape, (z / 2 - dz, y * 0.55, x * 0.76), (z * 0.12, y * 0.06, x * 0.05))
    lab[right | left] = 1
    lab[tumor] = 2
    img[lab == 1] = 180
    img[lab == 2] = 90
    img = (img + rng.integers(-20, 21, size=shape)).astype(np.int16)
    origin = (-0.5 * x * spacing[2], -0.5 * y * spacing[1], 100.0 + seed)
    return (Volume.from_geometry(img, spacing=spacing, origin=origin),
            Volume.from_geometry(lab, spacing=spacing, origin=origin))


def write_dataset(root: Path, n: int = 3, shape=(24, 40, 40), images: bool = True) -> Path:
    """A KiTS19-layout dataset of ``n`` synthetic cases (spacing varies per case)."""
    for i in range(n):
        spacing = (2.5 + 0.5 * i, 0.8, 0.8 + 0.05 * i)
        img, lab = make_case(i, shape, spacing)
        d = root / f"case_{i:05d}"
        d.mkdir(parents=True, exist_ok=True)
        if images:
            write_volume(img, d / "imaging.nii.gz")
        write_volume(lab, d / "segmentation.nii.gz")
    return root
