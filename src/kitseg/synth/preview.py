"""A PNG montage of a dataset: axial and coronal slices through the kidneys with label contours."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kitseg._atomic import atomic_path
from kitseg.datasets import open_dataset
from kitseg.errors import KitsegError
from kitseg.io import read_volume

WINDOW = (40.0, 400.0)  # soft-tissue window: level, width (HU)
CONTOURS = {1: "lime", 2: "red", 3: "yellow"}  # kidney, tumor, cyst


def _slices(label: np.ndarray, n: int) -> list[int]:
    zs = np.flatnonzero(label.any(axis=(1, 2)))
    if len(zs) == 0:
        return list(np.linspace(0, label.shape[0] - 1, n + 2)[1:-1].astype(int))
    return [int(zs[int(round(q * (len(zs) - 1)))]) for q in np.linspace(0.2, 0.8, n)]


def _show(ax, img, lab, aspect, title):
    lo, hi = WINDOW[0] - WINDOW[1] / 2, WINDOW[0] + WINDOW[1] / 2
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
    if lab is not None:
        for v, colour in CONTOURS.items():
            if (lab == v).any():
                ax.contour((lab == v).astype(np.uint8), levels=[0.5], colors=[colour], linewidths=0.7)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def write_preview(dataset_dir: str | Path, png_path: str | Path, max_cases: int = 4,
                  reference: str | Path | None = None) -> Path:
    """Write a montage of up to ``max_cases`` cases (three axial slices and a coronal one each).

    Window W400/L40; contours: kidney green, tumor red, cyst yellow. ``reference``: a real CT
    to show in the first row in the same window, for comparison.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = open_dataset(dataset_dir)
    cases = [c for c in ds.cases if c.image is not None][:max_cases]
    if not cases:
        raise KitsegError("no cases with an image to preview", dataset_dir)
    rows = [(c.case_id, read_volume(c.image), read_volume(c.label) if c.label else None) for c in cases]
    if reference is not None:
        rows.insert(0, (f"reference: {Path(reference).name}", read_volume(reference), None))
    fig, axes = plt.subplots(len(rows), 4, figsize=(13, 3.3 * len(rows)), squeeze=False)
    for r, (name, img, lab) in enumerate(rows):
        a = img.array.astype(np.float32)
        lb = lab.array if lab is not None else None
        zs = _slices(lb, 3) if lb is not None else list(np.linspace(0, a.shape[0] - 1, 5)[1:4].astype(int))
        for c, z in enumerate(zs):
            _show(axes[r, c], a[z], None if lb is None else lb[z], 1.0,
                  f"{name}  z={z}" if c == 0 else f"z={z}")
        y = int(np.median(np.nonzero(lb)[1])) if lb is not None and lb.any() else a.shape[1] // 2
        sz, sy, sx = img.spacing
        _show(axes[r, 3], a[::-1, y], None if lb is None else lb[::-1, y], sz / sx, f"coronal y={y}")
    fig.suptitle(f"{ds.root.name}: W{WINDOW[1]:.0f}/L{WINDOW[0]:.0f}; kidney green, tumor red, cyst yellow",
                 fontsize=9)
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return png_path
