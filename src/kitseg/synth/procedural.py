"""Procedural cases: draw a body, kidneys and lesions, sample them on a grid, apply the scanner model.

``draw_case(seed, size)`` draws everything a case is made of (a ``CaseSpec``); ``synthesize``
turns it into voxels. The anatomy is sampled on a finer render grid (``supersample`` per axis) and
averaged down, so each voxel holds the mean of the tissue inside it (partial volume); for thin
slices a Gaussian slice profile of FWHM = slice thickness is applied instead. Labels are the
nested majority of the sub-samples of a voxel (see ``_majority``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from kitseg.synth.anatomy import Body, Fields, Slab, draw_body, paint_body
from kitseg.synth.fields import noise_lattice
from kitseg.synth.kidney import Kidney, Lesion, draw_kidneys, draw_lesions, kidney_z_range, paint_kidneys, paint_vessels
from kitseg.synth.tissues import HuTable, add_noise_and_blur, blur_slices, draw_hu_table

# Slice thickness (mm) of the 150 KiTS19 label files in ../shared, and how many cases have each
# (read from their headers): full-size cases draw from this distribution.
KITS19_SLICE_MM = {0.5: 24, 1.0: 14, 1.25: 2, 1.5: 1, 2.0: 3, 2.5: 18, 3.0: 30, 3.75: 1, 4.0: 1, 5.0: 56}


@dataclass(frozen=True)
class SizeSpec:
    """A case size: array shape (nz None = from coverage), in-plane and slice spacing ranges (mm)."""

    name: str
    shape: tuple[int | None, int, int]
    inplane_mm: tuple[float, float]
    slice_mm: tuple[float, float] | None  # None: the KiTS19 distribution
    supersample_xy: int
    coverage_mm: tuple[float, float] = (180.0, 320.0)


SIZES = {
    # Coarse enough that the whole abdomen fits 64 x 64 pixels; for unit tests.
    "tiny": SizeSpec("tiny", (32, 64, 64), (6.0, 6.6), (5.5, 6.5), 2),
    # What the CPU demo trains on: kidneys ~ 20 x 20 x 30 voxels.
    "small": SizeSpec("small", (64, 128, 128), (2.9, 3.3), (3.0, 4.0), 2),
    # Like a real KiTS19 file: 512 x 512, spacings from the KiTS19 distribution.
    "full": SizeSpec("full", (None, 512, 512), (0.6, 1.0), None, 1),
}


@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid in the body frame: shape, spacing (z, y, x) mm, centre of voxel 0."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(o + s * np.arange(n) for o, s, n in zip(self.origin, self.spacing, self.shape))  # type: ignore

    def refine(self, f: tuple[int, int, int]) -> Grid:
        """The grid with each voxel split into f[0] x f[1] x f[2] sub-voxels."""
        return Grid(tuple(n * k for n, k in zip(self.shape, f)), tuple(s / k for s, k in zip(self.spacing, f)),
                    tuple(o - s / 2 + s / (2 * k) for o, s, k in zip(self.origin, self.spacing, f)))


@dataclass(frozen=True)
class CaseSpec:
    """Everything one synthetic case is made of (drawn by ``draw_case``)."""

    seed: int
    size: str
    grid: Grid
    body: Body
    kidneys: tuple[Kidney, ...]
    lesions: tuple[Lesion, ...]
    hu: HuTable
    noise_sd: float  # HU
    slice_mm: float  # slice thickness

    @property
    def n_tumors(self) -> int:
        return sum(les.kind == "tumor" for les in self.lesions)

    @property
    def n_cysts(self) -> int:
        return sum(les.kind == "cyst" for les in self.lesions)


def draw_case(seed: int, size: str = "tiny", n_tumors: int | None = None, phase: str = "arterial") -> CaseSpec:
    """Draw one case's anatomy, appearance and grid from ``seed`` (deterministic); ``phase``: the contrast
    phase, "arterial" or "unenhanced" (``kitseg.synth.tissues.PHASES``)."""
    spec = SIZES[size]
    rng = np.random.default_rng([int(seed), 0])
    body = draw_body(rng)
    kidneys = draw_kidneys(rng, body)
    lesions = draw_lesions(rng, kidneys, n_tumors)
    tumors = [les for les in lesions if les.kind == "tumor"]
    hu = draw_hu_table(rng, tuple(t.diameter for t in tumors[:3]), phase, np.random.default_rng([int(seed), 4]))
    noise_sd = float(rng.uniform(10, 30))
    if spec.slice_mm is None:
        values = np.array(list(KITS19_SLICE_MM))
        weights = np.array(list(KITS19_SLICE_MM.values()), float)
        dz = float(rng.choice(values, p=weights / weights.sum()))
    else:
        dz = float(rng.uniform(*spec.slice_mm))
    _, ny, nx = spec.shape
    # In-plane spacing: drawn, but widened so that the body fits the field of view.
    dx = float(min(max(rng.uniform(*spec.inplane_mm), (2 * body.a + 24) / nx), spec.inplane_mm[1] * 1.2))
    lo, hi = kidney_z_range(kidneys, lesions)
    nz = spec.shape[0] or int(np.ceil(rng.uniform(max(spec.coverage_mm[0], hi - lo + 40), spec.coverage_mm[1]) / dz))
    cover = (nz - 1) * dz
    z_lo_min, z_lo_max = hi + 10 - cover, lo - 10
    z0 = rng.uniform(z_lo_min, z_lo_max) if z_lo_max >= z_lo_min else (lo + hi - cover) / 2
    x0 = -(nx - 1) / 2 * dx + rng.uniform(-15, 15)
    y_mid = (body.b_post - body.b_ant) / 2 + rng.uniform(0, 20)  # the table sits below the patient
    y0 = y_mid - (ny - 1) / 2 * dx
    grid = Grid((nz, ny, nx), (dz, dx, dx), (float(z0), float(y0), float(x0)))
    return CaseSpec(int(seed), size, grid, body, kidneys, lesions, hu, noise_sd, dz)


def make_fields(seed: int, grid: Grid, margin: float = 20.0) -> Fields:
    """The case's random fields over its field of view, in mm (finest detail: 3 mm or 1.5 pixels)."""
    rng = np.random.default_rng([int(seed), 1])
    z, y, x = grid.axes()
    lo = (z[0] - margin, y[0] - margin, x[0] - margin)
    hi = (z[-1] + margin, y[-1] + margin, x[-1] + margin)
    fine = max(3.0, 1.5 * min(grid.spacing[1:]))
    return Fields(shape=noise_lattice(rng, lo, hi, 12.0), mid=noise_lattice(rng, lo, hi, 6.0),
                  fine=noise_lattice(rng, lo, hi, fine), bowel=noise_lattice(rng, lo, hi, 9.0),
                  low=noise_lattice(rng, lo, hi, 25.0))


@dataclass(frozen=True)
class Synthesis:
    """A synthesized case on its grid: HU image (float32), labels (uint8) and tissue classes (uint8)."""

    hu: np.ndarray
    label: np.ndarray
    tissue: np.ndarray
    clean: np.ndarray | None = None  # HU before the scanner model (blur, noise), when asked for


def supersampling(case: CaseSpec) -> tuple[int, int, int]:
    """Sub-samples per voxel (z, y, x): thick slices are integrated over ~2.5 mm steps."""
    sz = int(np.clip(np.ceil(case.grid.spacing[0] / 2.5), 1, 3))
    s = SIZES[case.size].supersample_xy
    return (sz, s, s)


def synthesize(case: CaseSpec, cyst_label: int = 1, scanner: bool = True, keep_clean: bool = False,
               supersample: tuple[int, int, int] | None = None) -> Synthesis:
    """Sample the case on its grid: tissue and label maps, HU image with partial volume and noise.

    ``cyst_label``: 1 for KiTS19 (cysts are kidney), 3 for KiTS21/23. ``scanner=False`` skips
    blur and noise; ``keep_clean`` also returns the HU image before them. ``supersample``
    overrides the sub-samples per voxel ((1, 1, 1): every voxel holds one tissue exactly).
    """
    # Many small matrix products: multithreaded BLAS only adds contention here (10x slower on 2 busy cores).
    with threadpool_limits(1, user_api="blas"):
        return _synthesize(case, cyst_label, scanner, keep_clean, supersample or supersampling(case))


def _synthesize(case: CaseSpec, cyst_label: int, scanner: bool, keep_clean: bool, f) -> Synthesis:
    fields = make_fields(case.seed, case.grid)
    zs, ys, xs = case.grid.refine(f).axes()
    nz, ny, nx = case.grid.shape
    hu = np.empty((nz, ny, nx), np.float32)
    label = np.empty((nz, ny, nx), np.uint8)
    tissue_out = np.empty((nz, ny, nx), np.uint8)
    mean, low_sd = case.hu.mean, case.hu.lowfreq_sd
    step = max(1, SLAB_VOXELS // (ny * nx * f[0] * f[1] * f[2]))  # output slices per slab
    for k0 in range(0, nz, step):
        k1 = min(nz, k0 + step)
        slab = Slab(zs[k0 * f[0]:k1 * f[0]], ys, xs)
        tissue = np.empty(slab.shape, np.uint8)
        tex = np.empty(slab.shape, np.float32)
        lab = np.zeros(slab.shape, np.uint8)
        paint_body(slab, case.body, fields, tissue, tex)
        paint_vessels(slab, case.body, case.kidneys, tissue)
        paint_kidneys(slab, case.kidneys, case.lesions, case.hu.tumor_looks, fields, tissue, tex, lab, cyst_label)
        tex += mean[tissue]
        tex += low_sd[tissue] * slab.sample(fields.low, (slice(None),) * 3)
        hu[k0:k1] = _block_mean(tex, f)
        label[k0:k1] = _majority(lab, f)
        tissue_out[k0:k1] = tissue[f[0] // 2::f[0], f[1] // 2::f[1], f[2] // 2::f[2]]
    clean = hu.copy() if keep_clean else None
    if scanner:
        apply_scanner(hu, case.grid.spacing, case.slice_mm, case.noise_sd, np.random.default_rng([case.seed, 2]),
                      integrated_z=f[0] > 1)
    return Synthesis(hu, label, tissue_out, clean)


def apply_scanner(hu: np.ndarray, spacing, slice_mm: float, noise_sd: float, rng: np.random.Generator,
                  integrated_z: bool = False) -> None:
    """Slice profile (unless the slices were already integrated), noise and in-plane PSF, in place."""
    if not integrated_z:
        blur_slices(hu, slice_mm, spacing[0])
    add_noise_and_blur(hu, noise_sd, spacing[1:], rng)


SLAB_VOXELS = 1 << 22  # render-grid voxels painted at once (~4 M: a few tens of MB of temporaries)


def _offsets(f):
    return [(slice(i, None, f[0]), slice(j, None, f[1]), slice(k, None, f[2]))
            for i in range(f[0]) for j in range(f[1]) for k in range(f[2])]


def _block_mean(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """Mean of each f-block of ``a`` (strided sums: much faster than a 6D reshape-mean)."""
    offs = _offsets(f)
    out = a[offs[0]].astype(np.float32, copy=True)
    for o in offs[1:]:
        out += a[o]
    out *= 1.0 / len(offs)
    return out


def _majority(sub: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """Label of each f-block of a (nz*f0, ny*f1, nx*f2) array -> (nz, ny, nx), by nested majority.

    Following the KiTS region hierarchy: a block is foreground when at least half its sub-voxels
    are labelled; then tumor when tumor sub-voxels are at least as many as the other labelled
    ones; else cyst when cysts are at least as many as kidney; else kidney. The KiTS19 and KiTS23
    versions of a case (cysts 1 or 3) thus get the same foreground and the same tumor.
    """
    if f == (1, 1, 1):
        return sub
    offs = _offsets(f)
    shape = sub[offs[0]].shape
    if not sub.any():
        return np.zeros(shape, np.uint8)
    counts = {}
    for v in (1, 2, 3):
        c = np.zeros(shape, np.int16)
        if v == 1 or (sub == v).any():
            for o in offs:
                c += sub[o] == v
        counts[v] = c
    c1, c2, c3 = counts[1], counts[2], counts[3]
    fg = 2 * (c1 + c2 + c3) >= len(offs)
    out = np.zeros(shape, np.uint8)
    out[fg] = 1
    out[fg & (c3 > 0) & (c3 >= c1)] = 3
    out[fg & (c2 >= c1 + c3)] = 2
    return out
