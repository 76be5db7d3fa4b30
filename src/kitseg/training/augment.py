"""Data augmentation of training patches: random parameters drawn apart from a deterministic apply.

``sample_params(spec, rng, dims, spacing)`` draws an ``AugParams`` from a numpy Generator (the
sampler's, so augmentation is reproducible and resumable); ``box_size`` says how large a region
around the patch the spatial part needs; ``apply_spatial``, ``apply_flips`` and
``apply_intensity`` are pure functions of the arrays and the parameters.

Transforms (``AugmentSpec``) and where they come from:

- rotation by U(-rotate_deg, rotate_deg) about each axis (in-plane only for 2D networks), in
  millimetre space so anisotropic voxels stay right: TuNet section 3.4 uses +-1 degree;
- zoom by U(scale) (nnU-Net's scaling); rotation and zoom are one ``grid_sample`` (linear for the
  CT, nearest for the labels) from a region enlarged just enough to hold the rotated patch;
- flips / mirroring of the listed axes with probability 0.5 each: the ResUNet paper's centrally
  symmetric mirroring (section 2.2), the 3D FCN-PPM flips (section III.B.2);
- translation by U(-translate_mm, translate_mm) per axis, done exactly by moving the crop, and
  random cropping (the sampler's random patch position): ResUNet/VNet section 3.1, FCN-PPM III.B.2;
- Gaussian blur (sigma U(0.5, 1.5) voxels) and histogram equalization with their probabilities
  (ResUNet/VNet section 3.1: "histogram averaging and Gaussian blurring");
- intensity scale x (1 + U(-s, s)) and shift + U(-t, t) on the CT channel (nnU-Net-style);
- spatial-prior degradation (``prior_degrade``, ours): a cascade's later stage is trained with a
  prior made from the ground truth but predicts with an earlier stage's coarse, imperfect mask; a
  network that has only seen perfect priors copies the prior's blocky edges and errors. With this
  probability the prior is coarsened to blocks of ``prior_coarse_mm`` (the earlier stage's grid,
  random phase) and dilated or eroded by U(-prior_morph_mm, prior_morph_mm). With probability
  ``prior_extra`` it first gets one or two ellipsoids of up to ``prior_extra_mm`` radius centred
  just outside its surface: the over-extension into a neighbouring organ that a briefly trained
  localizer makes (kitseg's phantom benchmark: stage 2's false positives lay inside such leaks).
- thin field of view (``thin_fov``, ours, 3D networks): with this probability only a run of slices
  U(``thin_fov_mm``) mm long, at a random place in the patch, is kept; the other slices become
  background and label 0, as inference pads a CT thinner than the patch (a 9 cm slab: a localizer
  trained only on whole abdomens found no kidney in one, BENCHMARKS.md "Sim-to-real").

Rotation, zoom and the intensity scale/shift are each applied with probability ``probability``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from kitseg.recipes.schema import AugmentSpec


@dataclass(frozen=True)
class AugParams:
    """One draw of augmentation parameters. ``matrix`` maps output voxel offsets (z, y, x) from the
    patch centre to input offsets (None: no resampling)."""

    matrix: tuple[tuple[float, float, float], ...] | None = None
    translate: tuple[int, int, int] = (0, 0, 0)
    flips: tuple[int, ...] = ()
    blur_sigma: float = 0.0
    hist_eq: bool = False
    scale: float = 1.0
    shift: float = 0.0
    prior_block: tuple[int, int, int] | None = None  # coarsening block (voxels); None: prior untouched
    prior_phase: tuple[int, int, int] = (0, 0, 0)
    prior_radius_mm: float = 0.0  # > 0 dilate, < 0 erode
    prior_extra_seed: int | None = None  # seeds the false-positive blobs added to the prior (None: none)
    prior_extra_mm: float = 20.0
    thin_fov: tuple[float, float] | None = None  # (kept extent mm, its start as a fraction of the free room)


NONE = AugParams()


def _rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation about the z, y and x array axes (in that order of composition)."""
    az, ay, ax = np.deg2rad(angles_deg)
    rz = np.array([[1, 0, 0], [0, np.cos(az), -np.sin(az)], [0, np.sin(az), np.cos(az)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rx = np.array([[np.cos(ax), -np.sin(ax), 0], [np.sin(ax), np.cos(ax), 0], [0, 0, 1]])
    return rz @ ry @ rx


def sample_params(spec: AugmentSpec, rng: np.random.Generator, dims: int = 3,
                  spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> AugParams:
    """Draw one set of parameters. The number of draws from ``rng`` does not depend on the outcomes,
    so a run's random stream is the same whatever happens to be applied."""
    u = rng.random(8)
    angles = rng.uniform(-1.0, 1.0, 3) * spec.rotate_deg
    zoom_u = rng.random()
    zoom = spec.scale[0] + zoom_u * (spec.scale[1] - spec.scale[0]) if spec.scale else 1.0
    trans = rng.uniform(-1.0, 1.0, 3) * spec.translate_mm
    flip_u = rng.random(3)
    sigma = rng.uniform(0.5, 1.5)
    i_scale, i_shift = rng.uniform(-1.0, 1.0, 2)
    prior_u, phase_u, morph_u = rng.random(), rng.random(3), rng.uniform(-1.0, 1.0)

    if dims == 2:  # 2D networks: rotate in-plane only, keep the slice axis
        angles[1:] = 0.0
        trans[0] = 0.0
    rotate = spec.rotate_deg > 0 and u[0] < spec.probability
    do_zoom = spec.scale is not None and u[1] < spec.probability and zoom != 1.0
    matrix = None
    if rotate or do_zoom:
        sp = np.asarray(spacing, float)
        rot = _rotation(angles if rotate else (0.0, 0.0, 0.0))
        m = np.diag(1.0 / sp) @ rot.T @ np.diag(sp) / (zoom if do_zoom else 1.0)
        if dims == 2:
            m[0, :], m[:, 0] = 0.0, 0.0
            m[0, 0] = 1.0
        matrix = tuple(tuple(float(v) for v in row) for row in m)
    intensity = u[2] < spec.probability
    block = None
    extra_u, extra_seed = (rng.random(), int(rng.integers(2**31))) if spec.prior_extra > 0 else (1.0, 0)
    # drawn only when asked for, so that recipes without it keep their random stream
    thin_u, thin_mm, thin_at = (rng.random(), rng.uniform(*spec.thin_fov_mm), rng.random()) if spec.thin_fov > 0 \
        else (1.0, 0.0, 0.0)
    if prior_u < spec.prior_degrade:
        block = tuple(max(1, int(round(spec.prior_coarse_mm / float(s)))) for s in spacing)
    return AugParams(
        matrix=matrix,
        translate=tuple(int(round(t / s)) for t, s in zip(trans, spacing)),
        flips=tuple(a for a in spec.flip_axes if flip_u[a] < 0.5),
        blur_sigma=float(sigma) if u[3] < spec.gaussian_blur else 0.0,
        hist_eq=bool(u[4] < spec.histogram_equalization),
        scale=float(1.0 + i_scale * spec.intensity_scale) if intensity else 1.0,
        shift=float(i_shift * spec.intensity_shift) if intensity else 0.0,
        prior_block=block,  # type: ignore[arg-type]
        prior_phase=tuple(int(p * b) for p, b in zip(phase_u, block)) if block else (0, 0, 0),  # type: ignore
        prior_radius_mm=float(morph_u * spec.prior_morph_mm) if block else 0.0,
        prior_extra_seed=extra_seed if block and extra_u < spec.prior_extra else None,
        prior_extra_mm=spec.prior_extra_mm,
        thin_fov=(float(thin_mm), float(thin_at)) if dims == 3 and thin_u < spec.thin_fov else None,
    )


def box_size(params: AugParams, patch: Sequence[int]) -> tuple[int, ...]:
    """The region (z, y, x voxels) to crop so that the transformed patch lies inside it.

    It has the patch's parity on every axis, so it shares the patch's centre exactly.
    """
    patch = np.asarray(patch, int)
    if params.matrix is None:
        return tuple(int(p) for p in patch)
    m = np.asarray(params.matrix)
    need = np.abs(m) @ (patch - 1) + 1
    margin = np.maximum(0, np.ceil((need - patch) / 2).astype(int)) + 1
    margin[np.isclose(np.abs(m), np.eye(3)).all(1) | (patch == 1)] = 0  # untouched axes (2D: the slices)
    return tuple(int(v) for v in patch + 2 * margin)


def apply_spatial(ct: np.ndarray, label: np.ndarray, params: AugParams,
                  patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Resample a box (from ``box_size``) to the patch: CT linearly, labels by nearest neighbour."""
    if params.matrix is None:
        return ct, label
    box = np.asarray(ct.shape, float)
    patch_arr = np.asarray(patch, float)
    # normalized output coordinates -> output voxel offsets from the centre -> input offsets -> normalized input
    half_box = np.where(box > 1, (box - 1) / 2, np.inf)  # a 1-voxel axis maps to coordinate 0
    a = np.diag(1.0 / half_box) @ np.asarray(params.matrix) @ np.diag((patch_arr - 1) / 2)
    a = torch.from_numpy(a[::-1].astype(np.float32))  # rows in grid_sample's (x, y, z) order
    # the grid is affine in each output axis: sum three broadcast terms (much faster than affine_grid)
    u = [torch.linspace(-1.0, 1.0, int(p)) if p > 1 else torch.zeros(1) for p in patch]
    grid = (u[0][:, None, None, None] * a[:, 0] + u[1][None, :, None, None] * a[:, 1]) \
        + u[2][None, None, :, None] * a[:, 2]
    grid = grid[None]
    t_ct = torch.from_numpy(np.ascontiguousarray(ct, dtype=np.float32))[None, None]
    t_lab = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None, None]
    out_ct = F.grid_sample(t_ct, grid, mode="bilinear", padding_mode="border", align_corners=True)
    out_lab = F.grid_sample(t_lab, grid, mode="nearest", padding_mode="zeros", align_corners=True)
    return out_ct[0, 0].numpy(), out_lab[0, 0].numpy().round().astype(label.dtype)


def apply_thin_fov(ct: np.ndarray, label: np.ndarray, params: AugParams, slice_mm: float,
                   background: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep a run of ``params.thin_fov[0]`` mm of slices (axis 0) and make the rest background / label 0."""
    if params.thin_fov is None:
        return ct, label
    extent, at = params.thin_fov
    n = ct.shape[0]
    keep = min(n, max(1, int(round(extent / float(slice_mm)))))
    start = int(at * (n - keep + 1))  # at < 1: start <= n - keep
    ct, label = ct.copy(), label.copy()
    ct[:start], ct[start + keep:] = background, background
    label[:start], label[start + keep:] = 0, 0
    return ct, label


def apply_flips(arrays: Sequence[np.ndarray], params: AugParams) -> list[np.ndarray]:
    """Mirror every array along the drawn axes (the same axes for image and labels)."""
    if not params.flips:
        return list(arrays)
    return [np.ascontiguousarray(np.flip(a, params.flips)) for a in arrays]


def apply_intensity(ct: np.ndarray, params: AugParams, dims: int = 3) -> np.ndarray:
    """Blur, histogram equalization, then scale and shift of the CT channel (never of masks)."""
    out = ct
    if params.blur_sigma > 0:
        sigma = (0.0 if dims == 2 else params.blur_sigma, params.blur_sigma, params.blur_sigma)
        out = gaussian_filter(out, sigma=sigma, mode="nearest")
    if params.hist_eq:
        out = equalize_histogram(out)
    if params.scale != 1.0 or params.shift != 0.0:
        out = out * np.float32(params.scale) + np.float32(params.shift)
    return np.asarray(out, np.float32)


def degrade_prior(prior: np.ndarray, params: AugParams, spacing: Sequence[float]) -> np.ndarray:
    """A ground-truth prior mask made to look like an earlier stage's output (``prior_block`` set).

    Blocks of ``prior_block`` voxels (offset by ``prior_phase``) become foreground when at least
    half their voxels are, then the mask is dilated (radius > 0) or eroded (< 0) by an ellipsoid of
    ``|prior_radius_mm|`` mm. Returns float32 0/1 of the input's shape.
    """
    from scipy.ndimage import binary_dilation, binary_erosion

    if params.prior_block is None:
        return prior
    mask = np.asarray(prior) > 0.5
    if params.prior_extra_seed is not None and mask.any():
        mask = add_leaks(mask, np.random.default_rng(params.prior_extra_seed), spacing, params.prior_extra_mm)
    block, phase = params.prior_block, params.prior_phase
    if any(b > 1 for b in block):
        pads = [(p, (-(n + p)) % b) for n, b, p in zip(mask.shape, block, phase)]
        padded = np.pad(mask, pads).astype(np.float32)
        n = [s // b for s, b in zip(padded.shape, block)]
        coarse = padded.reshape(n[0], block[0], n[1], block[1], n[2], block[2]).mean(axis=(1, 3, 5)) >= 0.5
        fine = coarse.repeat(block[0], 0).repeat(block[1], 1).repeat(block[2], 2)
        mask = fine[tuple(slice(p, p + s) for (p, _), s in zip(pads, mask.shape))]
    radius = abs(params.prior_radius_mm)
    r_vox = [int(radius // float(s)) for s in spacing]
    if any(r_vox) and mask.any():
        grid = np.ogrid[tuple(slice(-r, r + 1) for r in r_vox)]
        ball = sum((g * float(s) / max(radius, 1e-6)) ** 2 for g, s in zip(grid, spacing)) <= 1.0
        op = binary_dilation if params.prior_radius_mm > 0 else binary_erosion
        mask = op(mask, structure=ball)
    return mask.astype(np.float32)


def add_leaks(mask: np.ndarray, rng: np.random.Generator, spacing: Sequence[float], radius_mm: float) -> np.ndarray:
    """``mask`` plus one or two ellipsoids (radii U(0.3, 1) x ``radius_mm`` per axis) centred one radius
    outside a random surface voxel of the mask: a leak of the mask into what lies next to it."""
    from scipy.ndimage import binary_erosion

    sp = np.asarray(spacing, float)
    surface = np.argwhere(mask & ~binary_erosion(mask))
    out = mask.copy()
    for _ in range(int(rng.integers(1, 3))):
        radii = rng.uniform(0.3, 1.0, 3) * radius_mm
        seed = surface[int(rng.integers(len(surface)))]
        direction = rng.normal(size=3)
        direction /= max(np.linalg.norm(direction), 1e-6)
        centre = seed + direction * radii / sp * 0.8
        grid = np.ogrid[tuple(slice(0, n) for n in mask.shape)]
        out |= sum(((g - c) * s / r) ** 2 for g, c, s, r in zip(grid, centre, sp, radii)) <= 1.0
    return out


def equalize_histogram(ct: np.ndarray, bins: int = 256) -> np.ndarray:
    """Histogram equalization, keeping the patch's value range (MONAI's ``equalize_hist``)."""
    from monai.transforms.utils import equalize_hist

    lo, hi = float(ct.min()), float(ct.max())
    if hi <= lo:
        return ct
    return np.asarray(equalize_hist(ct, num_bins=bins, min=lo, max=hi), np.float32)
