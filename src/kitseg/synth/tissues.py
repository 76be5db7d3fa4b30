"""Tissue classes, their CT numbers (HU) in a late-arterial contrast CT, and the scanner model.

Each synthetic case draws one mean HU per tissue from the ranges below (docs/SYNTH.md lists them
with their sources), plus a low-frequency texture amplitude. Voxel values are then
``mean[tissue] + texture`` before the scanner model: partial-volume blur along z (slice
sensitivity profile of the slice thickness), noise, and the in-plane point-spread function.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage


class Tissue(IntEnum):
    AIR = 0
    LUNG = 1
    GAS = 2  # bowel gas
    FAT = 3
    SKIN = 4
    MUSCLE = 5
    BONE = 6  # cortical bone
    MARROW = 7  # cancellous bone of the vertebral bodies
    RIB = 8
    DISC = 9
    CANAL = 10  # spinal canal (CSF, cord)
    LIVER = 11
    SPLEEN = 12
    GUT_WALL = 13
    GUT_FLUID = 14
    STOOL = 15
    AORTA = 16
    IVC = 17
    RENAL_VEIN = 18
    ARTERY = 19  # small arteries (renal, mesenteric)
    CORTEX = 20  # renal cortex
    MEDULLA = 21  # renal medulla (pyramids)
    URINE = 22  # renal pelvis and ureter, unopacified in the arterial phase
    CYST = 23
    NECROSIS = 24
    TUMOR_A = 25  # up to three tumor looks per case (lesion k uses TUMOR_A + k % 3)
    TUMOR_B = 26
    TUMOR_C = 27
    TABLE = 28
    VEIN = 29  # portal and hepatic veins


# The renderer's version: bumped by every change that alters what is rendered for a given seed
# (HU table, anatomy, scanner model), and written into each dataset's synth.json, so that results
# can say which renderer made their data. 1: the first renderer (datasets without the field);
# 2: calibrated against a real CT (muscle, cancellous bone, ribs; thinner cortical bone); 3: the layout
# behind the kidneys measured on the same CT (paraspinal muscles as wide as the real ones, the spine
# further from the back, the kidneys' centres 2 mm in front of to 14 mm behind the vertebral bodies').
RENDERER_VERSION = 3

N_TISSUES = len(Tissue)
TUMOR_LOOKS = (Tissue.TUMOR_A, Tissue.TUMOR_B, Tissue.TUMOR_C)

# Range of the per-case mean HU of each tissue (late-arterial / corticomedullary phase). Sources
# and reasoning: docs/SYNTH.md. Medulla, tumors and the renal vein are drawn relative to others.
# Calibrated against a real CT slab in renderer version 2 (bench/bench_realism.py; docs/SYNTH.md,
# "Measured against a real CT"): muscle was 42-58 (real back muscles 26 HU [15, 37], psoas 37:
# older patients' muscle holds fat), cancellous bone 140-260 (real vertebrae 153 [109, 239]),
# ribs 350-650 (real ribs 220 [154, 288] at 3 mm; rendered 496 [439, 586]).
HU_RANGE: dict[Tissue, tuple[float, float]] = {
    Tissue.AIR: (-1000, -995), Tissue.LUNG: (-880, -820), Tissue.GAS: (-990, -900),
    Tissue.FAT: (-115, -85), Tissue.SKIN: (20, 60), Tissue.MUSCLE: (30, 58),
    Tissue.BONE: (700, 1200), Tissue.MARROW: (110, 250), Tissue.RIB: (180, 400), Tissue.DISC: (70, 110),
    Tissue.CANAL: (5, 35), Tissue.LIVER: (65, 95), Tissue.SPLEEN: (100, 150),
    Tissue.GUT_WALL: (70, 130), Tissue.GUT_FLUID: (0, 25), Tissue.STOOL: (-60, 20),
    Tissue.AORTA: (250, 400), Tissue.IVC: (70, 130), Tissue.RENAL_VEIN: (140, 220), Tissue.ARTERY: (150, 280),
    Tissue.CORTEX: (150, 250), Tissue.MEDULLA: (50, 140), Tissue.URINE: (0, 20), Tissue.CYST: (0, 20),
    Tissue.NECROSIS: (5, 35), Tissue.TUMOR_A: (40, 200), Tissue.TUMOR_B: (40, 200), Tissue.TUMOR_C: (40, 200),
    Tissue.TABLE: (100, 250), Tissue.VEIN: (110, 180),
}
# Contrast phases: "arterial" (the ranges above; most of KiTS19) or "unenhanced" (no intravenous
# contrast): the tissues that enhance get these ranges instead. Literature values for CT without
# contrast (renal parenchyma 30-40, liver 55-65 and 8-10 above the spleen, blood 35-50 HU), widened
# down to the real unenhanced slab of bench/bench_realism.py (kidneys 14 HU [3, 24] by their machine
# labels at 3 mm, liver 46, spleen 35, aorta 43, IVC 39).
PHASES = ("arterial", "unenhanced")
UNENHANCED_HU: dict[Tissue, tuple[float, float]] = {
    Tissue.CORTEX: (20, 40), Tissue.LIVER: (40, 65), Tissue.SPLEEN: (33, 52), Tissue.GUT_WALL: (25, 45),
    Tissue.AORTA: (30, 50), Tissue.IVC: (30, 50), Tissue.RENAL_VEIN: (30, 50), Tissue.ARTERY: (30, 50),
    Tissue.VEIN: (30, 50), Tissue.SKIN: (20, 50),
}
ORAL_CONTRAST_P = 0.35  # share of cases whose bowel fluid holds positive oral contrast
ORAL_CONTRAST_HU = (150, 300)
# Standard deviation (HU) of slow within-organ variation (a 25 mm random field).
LOWFREQ_SD: dict[Tissue, float] = {
    Tissue.FAT: 4, Tissue.MUSCLE: 3, Tissue.LIVER: 4, Tissue.SPLEEN: 6, Tissue.MARROW: 30, Tissue.GUT_WALL: 8,
    Tissue.CORTEX: 8, Tissue.MEDULLA: 8, Tissue.SKIN: 5,
}


@dataclass(frozen=True)
class TumorLook:
    """Appearance of one tumor: mean HU, mottled heterogeneity (SD of an 8 mm field), necrosis."""

    kind: str
    mean: float
    mottle_sd: float
    necrosis: float  # fraction of the tumor's core that is necrotic (low HU)


def draw_tumor_look(rng: np.random.Generator, diameter_mm: float) -> TumorLook:
    """Enhancement pattern of a renal tumor in the corticomedullary phase.

    Three looks in rough proportion of renal cell carcinoma subtypes: clear-cell-like
    (hypervascular, heterogeneous, necrotic when large), papillary-like (hypoenhancing, homogeneous)
    and chromophobe/oncocytoma-like (moderate). Means overlap both cortex and medulla on purpose:
    kidney and tumor "have the same distribution, ranging approximately from 100HU to 500HU"
    (3D FCN-PPM paper, Sec. II.B.1), so no single threshold separates them.
    """
    u = rng.random()
    big = np.clip((diameter_mm - 20.0) / 40.0, 0.0, 1.0)
    if u < 0.6:
        return TumorLook("clear_cell", rng.uniform(100, 200), rng.uniform(25, 45), big * rng.uniform(0.2, 0.6))
    if u < 0.85:
        return TumorLook("papillary", rng.uniform(45, 90), rng.uniform(8, 15), big * rng.uniform(0.0, 0.3))
    return TumorLook("chromophobe", rng.uniform(80, 140), rng.uniform(12, 22), big * rng.uniform(0.0, 0.2))


@dataclass(frozen=True)
class HuTable:
    """Per-case mean HU and slow-texture SD of every tissue (arrays indexed by ``Tissue``)."""

    mean: np.ndarray  # float32 (N_TISSUES,)
    lowfreq_sd: np.ndarray  # float32 (N_TISSUES,)
    tumor_looks: tuple[TumorLook, ...]
    phase: str = "arterial"

    def value(self, t: Tissue) -> float:
        return float(self.mean[int(t)])


def draw_hu_table(rng: np.random.Generator, tumor_diameters_mm=(30.0, 30.0, 30.0),
                  phase: str = "arterial", phase_rng: np.random.Generator | None = None) -> HuTable:
    """Draw one case's tissue means. Arterial: medulla 50-110 HU below the cortex (corticomedullary
    phase). Unenhanced: the enhancing tissues from ``UNENHANCED_HU``, medulla 0-8 HU below the cortex,
    tumors 20-45 HU, drawn from ``phase_rng`` (default ``rng``): with a generator of its own the
    case's other draws from ``rng`` stay those of its arterial twin."""
    if phase not in PHASES:
        raise ValueError(f"unknown contrast phase {phase!r}; use one of {', '.join(PHASES)}")
    mean = np.zeros(N_TISSUES, np.float32)
    for t, (lo, hi) in HU_RANGE.items():
        mean[t] = rng.uniform(lo, hi)
    mean[Tissue.MEDULLA] = max(mean[Tissue.CORTEX] - rng.uniform(50, 110), HU_RANGE[Tissue.MEDULLA][0])
    mean[Tissue.RENAL_VEIN] = min(mean[Tissue.RENAL_VEIN], mean[Tissue.AORTA] - 30)
    if rng.random() < ORAL_CONTRAST_P:
        mean[Tissue.GUT_FLUID] = rng.uniform(*ORAL_CONTRAST_HU)
    looks = tuple(draw_tumor_look(rng, d) for d in tumor_diameters_mm[:3])
    looks = looks + tuple(draw_tumor_look(rng, 30.0) for _ in range(3 - len(looks)))
    if phase == "unenhanced":
        r = rng if phase_rng is None else phase_rng
        for t, (lo, hi) in UNENHANCED_HU.items():
            mean[t] = r.uniform(lo, hi)
        mean[Tissue.MEDULLA] = mean[Tissue.CORTEX] - r.uniform(0, 8)
        # without contrast a renal tumor is near the parenchyma (slightly below it), little mottled
        looks = tuple(TumorLook(lk.kind, float(r.uniform(20, 45)), float(r.uniform(4, 10)), lk.necrosis)
                      for lk in looks)
    for t, look in zip(TUMOR_LOOKS, looks):
        mean[t] = look.mean
    sd = np.zeros(N_TISSUES, np.float32)
    for t, v in LOWFREQ_SD.items():
        sd[t] = v
    return HuTable(mean, sd, looks, phase)


# ---------------------------------------------------------------------------------------------
# Scanner model
# ---------------------------------------------------------------------------------------------
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
PSF_FWHM_MM = 1.0  # in-plane resolution of a standard soft-tissue kernel (~0.8-1.2 mm FWHM)


def blur_slices(hu: np.ndarray, slice_thickness_mm: float, spacing_z_mm: float) -> None:
    """Partial-volume blur along z, in place: Gaussian slice sensitivity profile, FWHM = thickness."""
    sigma = slice_thickness_mm * FWHM_TO_SIGMA / spacing_z_mm
    if sigma > 0.1 and hu.shape[0] > 1:
        ndimage.gaussian_filter1d(hu, sigma, axis=0, output=hu, mode="nearest", truncate=3.0)


def _kernel(sigma: float, truncate: float = 3.0) -> np.ndarray:
    """The discrete Gaussian that ``scipy.ndimage.gaussian_filter1d`` uses."""
    r = int(truncate * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / k.sum()


def add_noise_and_blur(hu: np.ndarray, sigma_hu: float, spacing_yx_mm: tuple[float, float],
                       rng: np.random.Generator, slab: int = 16) -> None:
    """Scanner noise and in-plane point-spread function, in place, slab by slab.

    White Gaussian noise is added and the image is then blurred in-plane by the PSF (Gaussian,
    FWHM ``PSF_FWHM_MM``), as a reconstruction kernel shapes both detail and noise: the noise
    comes out correlated over about a millimetre. Its amplitude before the blur is scaled so that
    the final noise standard deviation is exactly ``sigma_hu``. Slices are independent.
    """
    sig = [PSF_FWHM_MM * FWHM_TO_SIGMA / sp for sp in spacing_yx_mm]
    blur = [s if s > 0.15 else 0.0 for s in sig]
    keep = float(np.prod([np.sqrt(np.sum(_kernel(s) ** 2)) for s in blur if s]))  # noise SD kept by the blur
    for z0 in range(0, hu.shape[0], slab):
        part = hu[z0:z0 + slab]
        n = rng.standard_normal(part.shape, dtype=np.float32)
        n *= sigma_hu / keep
        part += n
        for axis, s in zip((1, 2), blur):
            if s:
                ndimage.gaussian_filter1d(part, s, axis=axis, output=part, mode="nearest", truncate=3.0)
