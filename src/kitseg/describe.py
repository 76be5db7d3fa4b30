"""Human-readable descriptions of volumes and datasets (`kitseg info`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from kitseg._itk import quiet_itk
from kitseg.datasets import open_dataset
from kitseg.io import VolumeLike, read_volume
from kitseg.volume import reorient

# An integer volume with at most this many distinct values is described as a label map.
_MAX_LABELS = 16


def _tuple(values, digits: int = 4) -> str:
    """``(0.8, 0.8, 3.304)``: rounded for reading, no float noise, no negative zero."""
    return "(" + ", ".join(f"{round(float(v), digits) + 0.0:g}" for v in values) + ")"


def describe_volume(src: VolumeLike) -> str:
    """What a file holds: first the file's own layout and geometry as ITK, SimpleITK and 3D Slicer show
    it (i, j, k order), then kitseg's canonical (z, y, x) view. Every tuple says its axis order."""
    vol = read_volume(src)
    arr = vol.array
    # the file's own layout: the canonical Volume put back into the file's axis order
    native = reorient(vol, vol.source.axis_codes, source=None) if vol.source is not None else vol
    spacing_ijk = native.spacing[::-1]
    direction_ijk = native.direction[:, ::-1]  # columns: file axes i, j, k in LPS
    lines = []
    if vol.source is not None:
        lines.append(f"file          {vol.source.path}")
        lines.append(f"file array    {tuple(vol.source.shape[::-1])} (i, j, k), axis codes "
                     f"{','.join(vol.source.itk_orientation)}, {vol.source.pixel_type}")
    lines.append(f"file spacing  {_tuple(spacing_ijk)} mm (i, j, k)")
    lines.append(f"file origin   {_tuple(native.origin, 3)} mm (x, y, z) LPS, as ITK and SimpleITK show it; "
                 f"{_tuple(np.array(native.origin) * (-1, -1, 1), 3)} mm RAS, as 3D Slicer shows it")
    lines.append(f"direction     {', '.join(_tuple(row) for row in direction_ijk)} (LPS rows x, y, z; "
                 "columns i, j, k, as ITK's GetDirection)")
    lines.append(f"shape         {vol.shape} (z, y, x) after reorientation to axis codes "
                 f"{','.join(vol.axis_codes)} (kitseg's canonical order)")
    lines.append(f"spacing       {_tuple(vol.spacing)} mm (z, y, x)")
    extent = tuple(n * sp for n, sp in zip(vol.shape, vol.spacing))
    lines.append(f"extent        {_tuple(extent, 1)} mm (z, y, x)")
    lines.append(f"intensity     min {arr.min():g}, max {arr.max():g}, mean {arr.mean(dtype=np.float64):.4g}")
    if np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() < 256:
        counts = np.bincount(arr.ravel().astype(np.uint8, copy=False))
        present = np.flatnonzero(counts)
        if len(present) <= _MAX_LABELS:
            ml = vol.voxel_volume_ml
            desc = ", ".join(f"{v}: {counts[v]} voxels ({counts[v] * ml:.1f} ml)" for v in present)
            lines.append(f"labels        {desc}")
    return "\n".join(lines)


def _header(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with quiet_itk():
        reader.ReadImageInformation()
    return tuple(reader.GetSize()), tuple(round(s, 3) for s in reader.GetSpacing())


def describe_dataset(root: str | Path) -> str:
    """Dataset summary from file headers only (fast even for 300 KiTS cases)."""
    ds = open_dataset(root)
    spec = ds.spec
    n_img = sum(c.image is not None for c in ds.cases)
    n_lab = sum(c.label is not None for c in ds.cases)
    lines = [f"dataset     {ds.root} ({spec.name}, {spec.layout} layout)",
             f"cases       {len(ds)} ({n_img} with image, {n_lab} with label)",
             f"labels      {spec.labels}",
             f"regions     {spec.regions}"]
    spacings = []
    for c in ds.cases:
        f = c.image or c.label
        try:
            shape, spacing = _header(f)
        except RuntimeError:
            lines.append(f"  {c.case_id:<14} unreadable header: {f}")
            continue
        spacings.append(spacing)
        lines.append(f"  {c.case_id:<14} file array {shape} (i, j, k), spacing {spacing} mm"
                     f"{'' if c.image else '  (label only)'}")
    if spacings:
        med = [float(np.median([s[i] for s in spacings])) for i in range(3)]
        lines.insert(4, f"median sp.  {_tuple(med)} mm (file axes i, j, k)")
    return "\n".join(lines)
