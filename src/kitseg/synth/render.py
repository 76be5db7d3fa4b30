"""A CT for a real label map: kidneys and tumors exactly where the labels say, a plausible body around.

``render_from_label`` places a procedural body (``anatomy``) around the labelled kidneys: its
midline between the two kidneys, its spine just in front of their mean depth, its width fitted to
their spacing, and the organs at their usual places relative to the kidneys. Label 1 becomes renal
cortex (the outer few mm) over medulla, label 2 tumor (its look chosen per connected tumor, with a
necrotic core when large), label 3 cyst; the perirenal fat keeps other organs off the kidneys.

The surroundings change slowly along z, so on thin slices (< 2 mm) they are painted every
``m``-th plane (~2 mm apart) and interpolated linearly in between; kidneys, tumors and cysts are
always painted on every slice of the label map. Distance maps (cortex depth, tumor depth, fat
rim) are computed on a ~2 mm grid and interpolated.
"""

from __future__ import annotations

from dataclasses import replace

import cc3d
import numpy as np
from scipy import ndimage
from scipy.special import ndtri
from threadpoolctl import threadpool_limits

from kitseg.errors import KitsegError
from kitseg.io import read_label
from kitseg.synth.anatomy import SOFT_ORGANS, Slab, draw_body, paint_body
from kitseg.synth.fields import map_lattice
from kitseg.synth.procedural import Grid, make_fields
from kitseg.synth.tissues import TUMOR_LOOKS, add_noise_and_blur, blur_slices, draw_hu_table
from kitseg.synth.tissues import Tissue as T
from kitseg.volume import Source, Volume

SLAB_VOXELS = 1 << 22
BODY_Z_STEP_MM = 2.0  # surroundings are painted at least this far apart in z, then interpolated
MAP_STEP_MM = 2.0  # grid of the distance maps


def render_from_label(label, seed: int, *, noise_sd: float | None = None, phase: str = "arterial") -> Volume:
    """A synthetic CT (int16 HU) on exactly the grid of ``label`` (a Volume or a label file).

    Voxels labelled 1 are kidney tissue, 2 tumor, 3 cyst; everything else is body. The returned
    Volume has the label's geometry and source orientation, so writing it next to the label gives
    a matching image/segmentation pair. Deterministic for a given ``seed``. ``phase``: "arterial"
    (late arterial, as most of KiTS19) or "unenhanced" (no contrast; ``kitseg.synth.tissues.PHASES``).
    """
    return _render_volumes(label, seed, noise_sd, phase, with_tissues=False)[0]


def render_with_tissues(label, seed: int, *, noise_sd: float | None = None,
                        phase: str = "arterial") -> tuple[Volume, Volume]:
    """``render_from_label`` and the tissue map it painted: (CT int16 HU, tissue classes uint8).

    The CT is exactly ``render_from_label(label, seed)``'s. The tissue map holds the
    ``kitseg.synth.tissues.Tissue`` value each voxel was painted with before the scanner model
    (blur, noise); on slices between two painted body planes (thin slices) the surroundings
    take the nearer plane's tissue. It is what ``bench/bench_realism.py`` compares with real CT
    organ by organ.
    """
    return _render_volumes(label, seed, noise_sd, phase, with_tissues=True)


def _render_volumes(label, seed: int, noise_sd: float | None, phase: str, with_tissues: bool):
    if not isinstance(label, Volume):
        label = read_label(label, {0, 1, 2, 3})
    lab = np.asarray(label.array)
    if lab.dtype != np.uint8:
        lab = lab.astype(np.uint8)
    tissue = np.empty(lab.shape, np.uint8) if with_tissues else None
    with threadpool_limits(1, user_api="blas"):
        hu = _render(lab, label.spacing, seed, noise_sd, phase, tissue)
    return label.with_array(hu), (None if tissue is None else label.with_array(tissue))


def _kidney_anchor(lab: np.ndarray, spacing) -> tuple[float, float, float, float]:
    """(z, y, x) mm of the kidneys' midpoint (index * spacing) and half their left-right distance."""
    step = tuple(max(1, int(round(3.0 / s))) for s in spacing)
    coarse = lab[:: step[0], :: step[1], :: step[2]] > 0
    sp = np.asarray(spacing) * step
    if not coarse.any():
        c = (np.asarray(lab.shape) - 1) * np.asarray(spacing) / 2
        return float(c[0]), float(c[1] + 40), float(c[2]), 75.0
    comps, n = cc3d.connected_components(coarse, connectivity=26, return_N=True)
    sizes = np.bincount(comps.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    cents = []
    for i in order[:4]:
        if sizes[i] < 0.1 * sizes[order[0]]:
            break
        cents.append(np.argwhere(comps == i + 1).mean(axis=0) * sp)
    xs = [c[2] for c in cents]
    centre_x = (lab.shape[2] - 1) * spacing[2] / 2
    if len(cents) >= 2 and max(xs) - min(xs) > 60:  # two kidneys
        left, right = cents[int(np.argmax(xs))], cents[int(np.argmin(xs))]
        mid = (left + right) / 2
        return float(mid[0]), float(mid[1]), float(mid[2]), float((left[2] - right[2]) / 2)
    c = cents[0]
    side = 1.0 if c[2] > centre_x else -1.0  # x grows toward the patient's left
    return float(c[0]), float(c[1]), float(c[2] - side * 75.0), 75.0


def _distance_maps(lab: np.ndarray, spacing, rim: float):
    """Coarse distance maps around the labelled region (None when nothing is labelled).

    Returns (window slices, origin mm, step mm, depth inside label>0, distance outside it,
    depth inside tumor, tumor component ids) on a ~``MAP_STEP_MM`` grid.
    """
    fg_any = [np.flatnonzero(np.any(lab > 0, axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    if len(fg_any[0]) == 0:
        return None
    step = np.array([max(1, int(round(MAP_STEP_MM / s))) for s in spacing])
    pad = [int(np.ceil((rim + 4) / s)) for s in spacing]
    lo = [max(0, int(ix[0]) - p) for ix, p in zip(fg_any, pad)]
    hi = [min(n, int(ix[-1]) + 1 + p) for ix, n, p in zip(fg_any, lab.shape, pad)]
    coarse = lab[lo[0]:hi[0]:step[0], lo[1]:hi[1]:step[1], lo[2]:hi[2]:step[2]]
    sp = np.asarray(spacing) * step
    fg = coarse > 0
    depth = ndimage.distance_transform_edt(fg, sampling=sp).astype(np.float32)
    outside = ndimage.distance_transform_edt(~fg, sampling=sp).astype(np.float32)
    tumor = coarse == 2
    tdepth = ndimage.distance_transform_edt(tumor, sampling=sp).astype(np.float32)
    ids = cc3d.connected_components(tumor, connectivity=26).astype(np.int32)
    origin = np.asarray(lo) * np.asarray(spacing)
    return origin, sp, depth, outside, tdepth, ids


def _render(lab: np.ndarray, spacing, seed: int, noise_sd: float | None, phase: str = "arterial",
            tissue_out: np.ndarray | None = None) -> np.ndarray:
    rng = np.random.default_rng([int(seed), 0])
    kz, ky, kx, half_sep = _kidney_anchor(lab, spacing)
    body = draw_body(rng, kidney_half_sep=half_sep)
    nz, ny, nx = lab.shape
    fov_half = min(kx, (nx - 1) * spacing[2] - kx)  # room beside the midline inside the image
    if body.a > fov_half - 8 and fov_half - 8 > half_sep + 45:
        body = replace(body, a=fov_half - 8)
    kid_y_body = body.spine_y + rng.uniform(-2, 14)  # KIDNEY_DEPTH_MM; version 2: 5 to 22
    origin = (-kz, -(ky - kid_y_body), -kx)  # body-frame mm of voxel (0, 0, 0)
    grid = Grid((nz, ny, nx), tuple(float(s) for s in spacing), origin)
    hu_table = draw_hu_table(rng, phase=phase, phase_rng=np.random.default_rng([int(seed), 4]))
    noise = float(rng.uniform(10, 30)) if noise_sd is None else float(noise_sd)
    cortex_mm, rim_mm = rng.uniform(4, 7), rng.uniform(6, 12)
    fields = make_fields(seed, grid)
    maps = _distance_maps(lab, spacing, rim_mm)
    mean, low_sd = hu_table.mean, hu_table.lowfreq_sd
    zs, ys, xs = grid.axes()
    m = max(1, int(BODY_Z_STEP_MM // spacing[0]))  # paint the body every m-th plane
    hu = np.empty(lab.shape, np.float32)
    body_planes = np.arange(0, nz, m)
    if body_planes[-1] != nz - 1:
        body_planes = np.append(body_planes, nz - 1)
    per_slab = max(1, SLAB_VOXELS // (ny * nx))
    for i0 in range(0, len(body_planes), per_slab):
        ks = body_planes[i0:i0 + per_slab]
        slab = Slab(zs[ks], ys, xs)
        tissue = np.empty(slab.shape, np.uint8)
        tex = np.empty(slab.shape, np.float32)
        paint_body(slab, body, fields, tissue, tex)
        if maps is not None:
            _fat_rim(slab, ks, grid, lab, maps, rim_mm, tissue)
        tex += mean[tissue]
        tex += low_sd[tissue] * slab.sample(fields.low, (slice(None),) * 3)
        hu[ks] = tex
        if tissue_out is not None:
            tissue_out[ks] = tissue
    _interpolate_planes(hu, body_planes)
    if tissue_out is not None:
        _nearest_planes(tissue_out, body_planes)
    if maps is not None:
        _paint_labels(lab, grid, maps, fields, hu_table, cortex_mm, hu, tissue_out)
    blur_slices(hu, spacing[0], spacing[0])
    add_noise_and_blur(hu, noise, spacing[1:], np.random.default_rng([int(seed), 2]))
    np.clip(hu, -1024, 3071, out=hu)
    return np.rint(hu).astype(np.int16)


def _interpolate_planes(hu: np.ndarray, planes: np.ndarray) -> None:
    """Fill the planes between the painted ones by linear interpolation along z, in place."""
    for a, b in zip(planes[:-1], planes[1:]):
        for k in range(a + 1, b):
            t = (k - a) / (b - a)
            np.multiply(hu[a], 1 - t, out=hu[k])
            hu[k] += t * hu[b]


def _nearest_planes(tissue: np.ndarray, planes: np.ndarray) -> None:
    """Fill the planes between the painted ones with the nearer painted plane's tissue, in place."""
    for a, b in zip(planes[:-1], planes[1:]):
        for k in range(a + 1, b):
            tissue[k] = tissue[a] if k - a <= b - k else tissue[b]


def _map_window(grid: Grid, maps, zs, ys, xs):
    """Index window (into the slab's y, x) of the distance maps' box, and the mm vectors inside it."""
    origin, sp, depth = maps[0], maps[1], maps[2]
    hi = origin + (np.asarray(depth.shape) - 1) * sp
    o = np.asarray(grid.origin)
    zmm, ymm, xmm = zs - o[0], ys - o[1], xs - o[2]  # back to index * spacing
    wy = slice(*np.searchsorted(ymm, [origin[1], hi[1]]))
    wx = slice(*np.searchsorted(xmm, [origin[2], hi[2]]))
    inside_z = (zmm >= origin[0]) & (zmm <= hi[0])
    return wy, wx, zmm, ymm[wy], xmm[wx], inside_z


def _fat_rim(slab: Slab, ks, grid: Grid, lab, maps, rim_mm: float, tissue) -> None:
    """Perirenal fat: soft organs within ``rim_mm`` of the labels become fat; labelled voxels too."""
    origin, sp, _, outside = maps[:4]
    wy, wx, zmm, ymm, xmm, inside_z = _map_window(grid, maps, slab.z, slab.y, slab.x)
    if not inside_z.any() or wy.stop <= wy.start or wx.stop <= wx.start:
        return
    iz = np.flatnonzero(inside_z)
    dist = map_lattice(outside, origin, sp).sample(zmm[iz], ymm, xmm)
    sub = tissue[iz[0]:iz[-1] + 1, wy, wx]
    near = (dist < rim_mm) | (lab[ks[iz], wy, wx] > 0)
    sub[near & np.isin(sub, SOFT_ORGANS)] = T.FAT


def _paint_labels(lab, grid: Grid, maps, fields, hu_table, cortex_mm: float, hu: np.ndarray,
                  tissue_out: np.ndarray | None = None) -> None:
    """Overwrite labelled voxels with kidney, tumor and cyst values, slab by slab, on every slice
    (and their tissues in ``tissue_out``, when given)."""
    origin, sp, depth, _, tdepth, ids = maps
    zs, ys, xs = grid.axes()
    wy, wx, zmm, ymm, xmm, inside_z = _map_window(grid, maps, zs, ys, xs)
    iz = np.flatnonzero(inside_z)
    depth_l, tdepth_l = map_lattice(depth, origin, sp), map_lattice(tdepth, origin, sp)
    mean, low_sd = hu_table.mean, hu_table.lowfreq_sd
    per_slab = max(1, SLAB_VOXELS // max(1, (wy.stop - wy.start) * (wx.stop - wx.start)))
    for j0 in range(0, len(iz), per_slab):
        kk = iz[j0:j0 + per_slab]
        sub_lab = lab[kk[0]:kk[-1] + 1, wy, wx]
        if not sub_lab.any():
            continue
        slab = Slab(zs[kk], ys[wy], xs[wx])
        every = (slice(None),) * 3
        tissue = np.zeros(sub_lab.shape, np.uint8)
        tex = np.zeros(sub_lab.shape, np.float32)
        kid = sub_lab == 1
        d = depth_l.sample(zmm[kk], ymm, xmm)
        medulla = (d > cortex_mm) & (slab.sample(fields.mid, every) > -0.35)
        tissue[kid] = T.CORTEX
        tissue[kid & medulla] = T.MEDULLA
        tissue[sub_lab == 3] = T.CYST
        tum = sub_lab == 2
        if tum.any():
            # The tumor look follows the nearest coarse connected component.
            idx = [np.clip(np.rint((v - o) / s).astype(int), 0, n - 1)
                   for v, o, s, n in zip((zmm[kk], ymm, xmm), origin, sp, ids.shape)]
            comp = ids[np.ix_(*idx)]
            look = np.where(comp > 0, (comp - 1) % 3, 0)
            mottle = slab.sample(fields.mid, every)
            td = tdepth_l.sample(zmm[kk], ymm, xmm)
            necro_field = slab.sample(fields.bowel, every)
            for j, t in enumerate(TUMOR_LOOKS):
                lk = hu_table.tumor_looks[j]
                m = tum & (look == j)
                tissue[m] = t
                tex[m] = lk.mottle_sd * mottle[m]
                if lk.necrosis > 0:
                    core = m & (td > 3.0) & (necro_field > ndtri(1 - lk.necrosis))
                    tissue[core] = T.NECROSIS
                    tex[core] = 4 * mottle[core]
        labelled = sub_lab > 0
        values = mean[tissue] + tex + low_sd[tissue] * slab.sample(fields.low, every)
        hu_sub = hu[kk[0]:kk[-1] + 1, wy, wx]
        hu_sub[labelled] = values[labelled]
        if tissue_out is not None:
            tissue_out[kk[0]:kk[-1] + 1, wy, wx][labelled] = tissue[labelled]


def downsample_label(label: Volume, factor: int) -> Volume:
    """Reduce the in-plane size of a label map by ``factor`` (majority of each factor x factor block).

    Nested majority as the KiTS regions: foreground if at least half the block is labelled, then
    tumor if tumor is at least half of the labelled part, then cyst vs kidney. Slices are kept. The
    in-plane size is padded with background to a multiple of ``factor``; the result's geometry
    (spacing x factor, origin at the centre of the first block, same directions and source
    orientation) is exact for the new grid.
    """
    if factor == 1:
        return label
    if factor < 1:
        raise KitsegError(f"downsampling factor must be >= 1, got {factor}")
    from kitseg.synth.procedural import _majority

    arr = label.array
    pad = [(0, 0)] + [(0, (-n) % factor) for n in arr.shape[1:]]
    arr = np.pad(arr, pad) if any(p[1] for p in pad) else arr
    out = _majority(arr, (1, factor, factor))
    aff = label.affine.copy()
    aff[:3, 1:3] *= factor
    aff[:3, 3] = label.index_to_world((0, (factor - 1) / 2, (factor - 1) / 2))
    src = label.source
    if src is not None:
        src = Source(None, src.axis_codes, tuple(_file_shape(out.shape, src.axis_codes)), src.pixel_type)
    return Volume(out, aff, src)


def _file_shape(shape, codes: str):
    """Shape of the array in a file with axis ``codes`` for a canonical (S, P, L) array of ``shape``."""
    axis_of = {"S": 0, "I": 0, "P": 1, "A": 1, "L": 2, "R": 2}
    return [shape[axis_of[c]] for c in codes]
