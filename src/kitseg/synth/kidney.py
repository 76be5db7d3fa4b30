"""Kidneys (cortex, medulla, sinus, pelvis), their vessels, tumors and cysts, in the body frame.

A kidney is an ellipsoid in its own frame (u: long axis, v: lateral, away from the hilum, w: the
third axis) with the renal sinus carved out of its medial side and opened at the hilum. The
cortex is the outer shell; pyramids of medulla sit inside it, separated by cortical columns.
The sinus holds fat and the unopacified renal pelvis (arterial phase). Labels follow KiTS19
annotation practice: kidney = parenchyma and pelvis (sinus fat is excluded: "voxels with a
radiodensity of less than -30 HU were excluded from the kidney contours", TuNet paper, Sec. 2);
tumor overrides kidney; cysts are kidney in KiTS19 and label 3 in KiTS21/23 (written 1, 3, 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from kitseg.synth.anatomy import SOFT_ORGANS, Body, Fields, Slab, box
from kitseg.synth.tissues import TUMOR_LOOKS, TumorLook
from kitseg.synth.tissues import Tissue as T

# Tissues a lesion never replaces (it grows within and around the kidney, not into bone or air).
_HARD = np.array([T.AIR, T.SKIN, T.BONE, T.MARROW, T.RIB, T.DISC, T.CANAL, T.TABLE], np.uint8)
TUMOR_COUNT_P = (0.08, 0.62, 0.2, 0.1)  # 0, 1, 2, 3 tumors per case


@dataclass(frozen=True)
class Kidney:
    side: int  # -1: right kidney (x < 0), +1: left
    centre: tuple[float, float, float]  # (z, y, x) mm
    axes: tuple[float, float, float]  # half-length, half-width, half-thickness
    rot: np.ndarray  # columns: u, v, w in (z, y, x)
    cortex: float  # cortical thickness, mm
    rim: float  # perirenal fat kept free of other organs, mm
    pyramids: int
    phase: float

    def to_world(self, local) -> np.ndarray:
        return np.asarray(self.centre) + self.rot @ np.asarray(local, float)

    def hilum(self) -> np.ndarray:
        return self.to_world((0.0, -1.0 * self.axes[1], 0.0))


@dataclass(frozen=True)
class Lesion:
    kind: str  # "tumor" or "cyst"
    lobes: tuple[tuple[tuple[float, float, float], float], ...]  # ((z, y, x) centre, radius) mm
    dent: float
    look: int = 0  # tumors: index into the case's tumor looks

    @property
    def diameter(self) -> float:
        return 2.0 * self.lobes[0][1]

    def z_range(self) -> tuple[float, float]:
        return (min(c[0] - r for c, r in self.lobes), max(c[0] + r for c, r in self.lobes))


def _kidney_rotation(side: int, tilt_medial: float, tilt_post: float, turn: float) -> np.ndarray:
    """Long axis tilted so the upper pole is medial and posterior; hilum facing antero-medially."""
    u = np.array([1.0, np.tan(tilt_post), -side * np.tan(tilt_medial)])
    u /= np.linalg.norm(u)
    v = np.cos(turn) * np.array([0.0, 0.0, side]) + np.sin(turn) * np.array([0.0, 1.0, 0.0])
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    return np.stack([u, v, np.cross(u, v)], axis=1)


def draw_kidneys(rng: np.random.Generator, body: Body, solitary_p: float = 0.04) -> tuple[Kidney, ...]:
    """Two kidneys beside the spine, the right one lower (the liver above it) and a little smaller."""
    u = rng.uniform
    drop = u(5, 30)  # right kidney lower than the left by this much
    size = u(0.9, 1.1)
    missing = int(rng.integers(0, 2)) if rng.random() < solitary_p else -1
    kidneys = []
    for i, side in enumerate((-1, 1)):
        scale = size * (1.0 if side < 0 else u(1.0, 1.06))
        axes = (u(50, 62) * scale, u(24, 31) * scale, u(18, 24) * scale)
        centre = (side * drop / 2, body.spine_y + u(-2, 14), side * u(65, 82))
        if i == missing:
            continue
        rot = _kidney_rotation(side, np.deg2rad(u(5, 20)), np.deg2rad(u(5, 20)), np.deg2rad(u(20, 45)))
        kidneys.append(Kidney(side, centre, axes, rot, u(4, 6.5), u(6, 14), int(rng.integers(5, 8)), u(0, 6.3)))
    return tuple(kidneys)


def _surface_point(rng: np.random.Generator, k: Kidney):
    """A random point on the kidney surface away from the hilum, and the outward normal (local frame)."""
    a = np.asarray(k.axes)
    for _ in range(20):
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        if d[1] > -0.4:
            break
    s = d / np.sqrt(np.sum((d / a) ** 2))
    n = s / a**2
    return s, n / np.linalg.norm(n)


def draw_lesions(rng: np.random.Generator, kidneys: tuple[Kidney, ...], n_tumors: int | None = None,
                 cyst_p: float = 0.4) -> tuple[Lesion, ...]:
    """0-3 tumors (1-8 cm, round to lobulated, endo- to exophytic) and, in 40% of cases, 1-3 cysts.

    About 40% of KiTS19 cases have renal cysts, and cysts are the main source of false-positive
    tumor (3D ResUNet/2.5D VNet paper, Sec. 3.4).
    """
    if not kidneys:
        return ()
    if n_tumors is None:
        n_tumors = int(rng.choice(4, p=TUMOR_COUNT_P))
    lesions = []
    n_cysts = int(rng.integers(1, 4)) if rng.random() < cyst_p else 0
    for j in range(n_cysts + n_tumors):
        tumor = j >= n_cysts
        k = kidneys[int(rng.integers(len(kidneys)))]
        dia = float(np.exp(rng.uniform(np.log(10), np.log(80)) if tumor else rng.uniform(np.log(8), np.log(45))))
        r = dia / 2
        s, n = _surface_point(rng, k)
        e = rng.uniform(-0.8, 0.9) if tumor else rng.uniform(-0.4, 0.8)
        c = s + e * r * n
        lobes = [(tuple(k.to_world(c)), r)]
        if tumor and dia >= 20:
            for _ in range(int(rng.integers(0, 3))):
                off = rng.standard_normal(3)
                off *= r * rng.uniform(0.3, 0.6) / np.linalg.norm(off)
                lobes.append((tuple(k.to_world(c + off)), r * rng.uniform(0.45, 0.75)))
        dent = rng.uniform(0.04, 0.12) if tumor else 0.01
        lesions.append(Lesion("tumor" if tumor else "cyst", tuple(lobes), dent, (j - n_cysts) % 3 if tumor else 0))
    return tuple(lesions)


def kidney_z_range(kidneys, lesions) -> tuple[float, float]:
    """Lowest and highest z (mm) that a kidney or lesion reaches."""
    lo = [k.centre[0] - k.axes[0] for k in kidneys] + [les.z_range()[0] for les in lesions]
    hi = [k.centre[0] + k.axes[0] for k in kidneys] + [les.z_range()[1] for les in lesions]
    return (min(lo, default=-60.0), max(hi, default=60.0))


# ---------------------------------------------------------------------------------------------
# Painting a slab
# ---------------------------------------------------------------------------------------------
def _segment(slab: Slab, tissue, p0, p1, radius, t):
    """A straight vessel from p0 to p1 ((z, y, x) mm) of the given radius."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    w = slab.win(np.minimum(p0, p1) - radius, np.maximum(p0, p1) + radius)
    if w is None:
        return
    d = p1 - p0
    Z, Y, X = slab.coords(w)
    qz, qy, qx = Z - p0[0], Y - p0[1], X - p0[2]
    s = np.clip((qz * d[0] + qy * d[1] + qx * d[2]) / float(d @ d), 0, 1)
    dist2 = (qz - s * d[0]) ** 2 + (qy - s * d[1]) ** 2 + (qx - s * d[2]) ** 2
    sub = tissue[w]
    sub[(dist2 < radius**2) & ~np.isin(sub, _HARD)] = t


def paint_vessels(slab: Slab, body: Body, kidneys, tissue) -> None:
    """Renal arteries from the aorta and renal veins to the IVC (the left vein crosses in front of the aorta)."""
    ax, ay, ar = body.aorta
    ix, iy = body.ivc[:2]
    for k in kidneys:
        h = k.hilum()
        _segment(slab, tissue, (h[0] + 8, ay, ax), h + k.rot @ np.array([0, 8.0, 0]), 3.0, T.ARTERY)
        if k.side > 0:
            front = (h[0] - 5, ay - ar - 5, ax)
            _segment(slab, tissue, h, front, 4.5, T.RENAL_VEIN)
            _segment(slab, tissue, front, (h[0] - 8, iy, ix), 4.5, T.RENAL_VEIN)
        else:
            _segment(slab, tissue, h, (h[0] - 5, iy, ix), 5.0, T.RENAL_VEIN)


def paint_kidneys(slab: Slab, kidneys, lesions, looks: tuple[TumorLook, ...], fields: Fields, tissue, tex, label,
                  cyst_label: int) -> None:
    """Paint kidneys, cysts and tumors into ``tissue``/``tex`` and their labels into ``label``."""
    for k in kidneys:
        _paint_kidney(slab, k, fields, tissue, tex, label)
    for les in sorted(lesions, key=lambda le: le.kind != "cyst"):  # cysts first: tumor wins
        _paint_lesion(slab, les, looks, fields, tissue, tex, label, cyst_label)


def extent(rot: np.ndarray, axes) -> np.ndarray:
    """Half-size (z, y, x) of the box around an ellipsoid with these axes and rotation."""
    return np.sqrt(((rot * np.asarray(axes, float)[None, :]) ** 2).sum(axis=1))


def _paint_kidney(slab: Slab, k: Kidney, fields, tissue, tex, label):
    A, B, C = k.axes
    w = slab.win(*box(k.centre, extent(k.rot, (A + k.rim, B + k.rim, C + k.rim)) + 1))
    if w is None:
        return
    Z, Y, X = slab.coords(w)
    dz, dy, dx = Z - k.centre[0], Y - k.centre[1], X - k.centre[2]
    u, v, ww = (k.rot[0, i] * dz + k.rot[1, i] * dy + k.rot[2, i] * dx for i in range(3))
    rim = (u / (A + k.rim)) ** 2 + (v / (B + k.rim)) ** 2 + (ww / (C + k.rim)) ** 2 < 1
    tw, xw, lw = tissue[w], tex[w], label[w]
    tw[rim & np.isin(tw, SOFT_ORGANS)] = T.FAT
    r = np.sqrt((u / A) ** 2 + (v / B) ** 2 + (ww / C) ** 2) / (1 + 0.03 * slab.sample(fields.shape, w))
    inside = r < 1
    if not inside.any():
        return
    notch = (v < -0.45 * B) & (np.abs(u) < 0.3 * A) & (np.abs(ww) < 0.4 * C)  # the hilum opening
    sinus = ((u / (0.5 * A)) ** 2 + ((v + 0.55 * B) / (0.4 * B)) ** 2 + (ww / (0.45 * C)) ** 2 < 1) | notch
    pelvis = (u / (0.28 * A)) ** 2 + ((v + 0.6 * B) / (0.28 * B)) ** 2 + (ww / (0.28 * C)) ** 2 < 1
    par = inside & ~sinus
    depth = np.sqrt(u**2 + v**2 + ww**2) * (1 / np.maximum(r, 1e-3) - 1)  # to the surface, along the ray
    tw[inside & sinus] = T.FAT
    tw[par] = T.CORTEX
    # Pyramids: sectors around the sinus, separated by cortical columns, irregular by a field.
    deep = par & (depth > k.cortex)
    angle = np.arctan2(ww[deep], v[deep] + 0.55 * B)
    pattern = np.cos(k.pyramids * angle + k.phase) + 0.6 * slab.sample(fields.mid, w)[deep]
    tw[tuple(ix[pattern > -0.5] for ix in np.nonzero(deep))] = T.MEDULLA
    tw[pelvis] = T.URINE
    xw[inside | pelvis] = 0
    lw[par | (pelvis & inside & ~notch)] = 1


def _paint_lesion(slab: Slab, les: Lesion, looks, fields, tissue, tex, label, cyst_label):
    (c0, r0) = les.lobes[0]
    reach = max(np.linalg.norm(np.subtract(c, c0)) + r for c, r in les.lobes) * (1 + 3 * les.dent) + 1
    w = slab.win(*box(c0, reach))
    if w is None:
        return
    Z, Y, X = slab.coords(w)
    q = None
    for c, r in les.lobes:
        qi = np.sqrt((Z - c[0]) ** 2 + (Y - c[1]) ** 2 + (X - c[2]) ** 2) / r
        q = qi if q is None else np.minimum(q, qi)
    q = q / (1 + les.dent * slab.sample(fields.shape, w))
    tw, xw, lw = tissue[w], tex[w], label[w]
    m = (q < 1) & ~np.isin(tw, _HARD)
    if not m.any():
        return
    if les.kind == "cyst":
        tw[m], xw[m], lw[m] = T.CYST, 0, cyst_label
        return
    look = looks[les.look]
    mottle = slab.sample(fields.mid, w)
    tw[m] = TUMOR_LOOKS[les.look]
    xw[m] = look.mottle_sd * mottle[m]
    if look.necrosis > 0:
        core = m & ((1 - q) * r0 > 3.0) & (slab.sample(fields.bowel, w) > ndtri(1 - look.necrosis))
        tw[core] = T.NECROSIS
        xw[core] = 4 * mottle[core]
    lw[m] = 2
