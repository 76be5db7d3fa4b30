"""The abdomen around the kidneys: body wall, spine and ribs, muscles, vessels, liver, spleen, bowel.

Everything is placed in the *body frame*, millimetres with the LPS axis directions of the
canonical Volume: x toward the patient's left, y toward posterior, z toward superior. x = 0 is the
midline, y = 0 the middle of the body's front-back extent, z = 0 the mean height of the two
kidney centres. ``paint_body`` paints one axial plane with vectorized numpy; nothing here knows
about voxels except through the coordinate vectors it is given, so a case looks the same at any
spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kitseg.synth.fields import Lattice
from kitseg.synth.tissues import Tissue as T

# Cortical bone around the cancellous bone of the vertebrae (body and posterior elements) and the iliac
# wings. Renderer version 1 had a 2.5 mm shell and all-cortical posterior elements and iliac wings;
# the real CT slab's vertebrae (3 mm voxels) read 153 HU [IQR 109-239], the rendered ones 760 [167-824]
# (bench/bench_realism.py, docs/SYNTH.md), most of their volume being painted cortical bone.
CORTEX_MM = 1.5
SOFT_ORGANS = np.array([T.LIVER, T.SPLEEN, T.GUT_WALL, T.GUT_FLUID, T.GAS, T.STOOL, T.ARTERY], np.uint8)


@dataclass(frozen=True)
class Blob:
    """A rotated, randomly dented ellipsoid: centre (z, y, x) mm, semi-axes (mm), rotation columns."""

    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    rot: np.ndarray  # 3x3, columns = the blob's axes in (z, y, x)
    dent: float = 0.08  # relative surface perturbation


@dataclass(frozen=True)
class Body:
    a: float  # lateral half-width at z = 0
    b_ant: float  # anterior half-depth
    b_post: float  # posterior half-depth (the back is flatter)
    p: float  # superellipse exponent of the cross-section
    taper: float  # relative change of the width per 100 mm upward
    fat: float  # subcutaneous fat thickness
    fat_phase: float  # angle where the subcutaneous fat is thickest
    wall: float  # abdominal wall muscle thickness
    spine_y: float  # centre of the vertebral bodies
    vert: tuple[float, float]  # vertebral body half-width, half-depth
    level: float  # height of one vertebra + disc
    disc: float
    level_phase: float
    aorta: tuple[float, float, float]  # x, y, radius
    bifurcation_z: float
    ivc: tuple[float, float, float, float]  # x, y, half-width, half-depth
    psoas_top: float
    liver: tuple[Blob, Blob]
    spleen: Blob
    stomach: Blob
    colon_r: tuple[float, float, float]  # ascending, transverse, descending radius
    colon_z: tuple[float, float, float]  # top of ascending, transverse height, top of descending
    small_bowel_top: float
    rib_z: float  # height of the lowest rib where it leaves the spine
    crest_z: float  # top of the iliac crests
    table_gap: float
    para: tuple[float, float, float] = (24.0, 21.0, 24.0)  # paraspinal muscles: half-width, half-depth,
    # centre behind the spinal canal (mm)


def _rot_z(angle: float) -> np.ndarray:
    """Rotation about the z axis (in the axial plane), in (z, y, x) order."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], float)


def draw_body(rng: np.random.Generator, kidney_half_sep: float | None = None) -> Body:
    """Draw a body habitus and organ layout. ``kidney_half_sep`` widens the body to fit given kidneys."""
    u = rng.uniform
    habitus = u(0, 1)  # 0 slim .. 1 large
    a = 140 + 45 * habitus + u(-10, 10)
    if kidney_half_sep is not None:
        a = max(a, kidney_half_sep + 75)
    b_ant = 110 + 45 * habitus + u(-8, 8)
    b_post = 0.78 * b_ant + u(0, 10)
    fat = 8 + 35 * habitus + u(-4, 6)
    # Vertebral-body centre to the inside of the back's fat: 72-90 mm (renderer version 3; was 62-72).
    # The real slab (bench/bench_realism.py, "layout") measures 75-95 mm: its paraspinal muscles fill
    # the back behind the spine, where version 2 left a thin layer.
    spine_y = b_post - fat - u(72, 90)
    vert = (u(20, 26), u(15, 19))
    aorta_r = u(9, 13)
    aorta = (u(6, 16), spine_y - vert[1] - aorta_r - u(2, 6), aorta_r)
    ivc_h = u(8, 11)
    ivc = (-u(20, 28), spine_y - vert[1] - ivc_h - u(3, 8), u(12, 15), ivc_h)
    lz = u(65, 95)
    liver = (Blob((lz, -0.05 * b_ant, -0.42 * a), (u(85, 100), 0.8 * (b_ant + b_post) / 2, 0.52 * a),
                  _rot_z(u(-0.2, 0.2)), 0.06),
             Blob((lz + 35, -0.55 * b_ant, 0.05 * a), (60, 0.3 * b_ant, 0.42 * a), _rot_z(u(-0.2, 0.2)), 0.08))
    spleen = Blob((u(50, 80), 0.3 * b_post, 0.62 * a), (u(45, 60), u(40, 50), u(20, 26)), _rot_z(u(0.3, 0.7)), 0.08)
    stomach = Blob((u(95, 125), -0.35 * b_ant, 0.3 * a), (65, 0.35 * b_ant, 0.28 * a), _rot_z(u(-0.3, 0.3)), 0.1)
    return Body(a=a, b_ant=b_ant, b_post=b_post, p=u(2.0, 2.6), taper=u(-0.05, 0.08), fat=fat,
                fat_phase=u(0, 2 * np.pi), wall=u(7, 13), spine_y=spine_y, vert=vert, level=u(33, 38),
                disc=u(7, 10), level_phase=u(0, 40), aorta=aorta, bifurcation_z=-u(100, 150), ivc=ivc,
                psoas_top=u(20, 50), liver=liver, spleen=spleen, stomach=stomach,
                colon_r=(u(18, 25), u(16, 22), u(13, 18)), colon_z=(u(-10, 20), u(0, 30), u(20, 50)),
                small_bowel_top=u(10, 40), rib_z=u(35, 70), crest_z=-u(105, 140), table_gap=u(1, 8),
                para=(u(30, 40), u(17, 23), u(28, 36)))


class Slab:
    """A block of axial planes: 1D mm coordinates ``z``, ``y``, ``x`` and their broadcastable forms."""

    def __init__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray):
        self.z, self.y, self.x = (np.asarray(v, np.float64) for v in (z, y, x))
        self.Z = self.z.astype(np.float32)[:, None, None]
        self.Y = self.y.astype(np.float32)[None, :, None]
        self.X = self.x.astype(np.float32)[None, None, :]
        self.Q = np.hypot(self.Y, self.X)  # distance from the body axis, (1, ny, nx)
        self.PHI = np.arctan2(self.X, -self.Y)  # angle from anterior

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.z), len(self.y), len(self.x))

    def win(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Index window of the box lo..hi ((z, y, x) mm); None when it misses the slab."""
        w = []
        for v, a, b in zip((self.z, self.y, self.x), lo, hi):
            i0, i1 = np.searchsorted(v, [a, b])
            if i1 <= i0:
                return None
            w.append(slice(int(i0), int(i1)))
        return tuple(w)  # type: ignore[return-value]

    def coords(self, w):
        """Broadcastable (Z, Y, X) float32 coordinates of window ``w``."""
        return self.Z[w[0]], self.Y[:, w[1]], self.X[:, :, w[2]]

    def sample(self, field: Lattice, w) -> np.ndarray:
        return field.sample(self.z[w[0]], self.y[w[1]], self.x[w[2]])


@dataclass(frozen=True)
class Fields:
    """The case's random fields (unit variance): surface shape, mid and fine texture, bowel loops, slow drift."""

    shape: Lattice
    mid: Lattice
    fine: Lattice
    bowel: Lattice
    low: Lattice


def box(centre, half) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    c, h = np.asarray(centre, float), np.broadcast_to(np.asarray(half, float), (3,))
    return tuple(c - h), tuple(c + h)  # type: ignore[return-value]


def blob_inside(blob: Blob, slab: Slab, fields: Fields):
    """(window, bool mask, normalized radius) of the part of ``blob`` inside the slab, or None."""
    reach = max(blob.axes) * (1 + 2 * blob.dent)
    w = slab.win(*box(blob.centre, reach))
    if w is None:
        return None
    Z, Y, X = slab.coords(w)
    d = (Z - blob.centre[0], Y - blob.centre[1], X - blob.centre[2])
    r2 = 0.0
    for k in range(3):
        r2 = r2 + ((blob.rot[0, k] * d[0] + blob.rot[1, k] * d[1] + blob.rot[2, k] * d[2]) / blob.axes[k]) ** 2
    r = np.sqrt(r2) / (1 + blob.dent * slab.sample(fields.shape, w))
    return w, r < 1, r


def paint_body(slab: Slab, body: Body, fields: Fields, tissue: np.ndarray, tex: np.ndarray) -> None:
    """Paint the body (everything but the kidneys) into ``tissue``/``tex`` of shape ``slab.shape``."""
    b = body
    # The cross-section is a superellipse whose width changes with z: rp = r**p is separable,
    # and "deeper than d below the skin along the ray from the axis" is rp < (Q / (Q + d))**p,
    # a 2D threshold: only comparisons run over the whole slab.
    yn = np.where(slab.Y < 0, -slab.Y / b.b_ant, slab.Y / b.b_post) ** b.p
    rp = np.abs(slab.X) ** b.p * (b.a * (1 + b.taper * slab.Z / 100)) ** -b.p + yn
    fat = b.fat * (1 + 0.35 * np.cos(slab.PHI - b.fat_phase))

    def deeper(d):
        return rp < (slab.Q / (slab.Q + d)) ** b.p

    tex[:] = 0
    tissue[:] = T.AIR
    tissue[rp < 1] = T.SKIN
    tissue[deeper(2.5)] = T.FAT
    tissue[deeper(fat)] = T.MUSCLE
    cavity = deeper(fat + b.wall)
    tissue[cavity] = T.FAT
    _table(slab, b, tissue)
    _spine_and_muscles(slab, b, tissue, cavity, deeper(fat))
    inner = fat + 0.2 * b.wall
    _ribs(slab, b, tissue, deeper(inner) & ~deeper(inner + 9))
    _iliac_wings(slab, b, tissue, cavity)
    for organ, t in ((b.liver[0], T.LIVER), (b.liver[1], T.LIVER), (b.spleen, T.SPLEEN)):
        hit = blob_inside(organ, slab, fields)
        if hit is not None:
            w, m, r = hit
            m &= cavity[w] & (tissue[w] == T.FAT)
            tissue[w][m] = t
            if t == T.LIVER:  # portal and hepatic vein branches: thin sheets of a random field
                veins = m & (r < 0.92) & (np.abs(slab.sample(fields.bowel, w)) < 0.1)
                tissue[w][veins & (slab.sample(fields.mid, w) > 0.2)] = T.VEIN
    _stomach(slab, b, fields, tissue, cavity)
    _vessels(slab, b, tissue)
    _colon(slab, b, fields, tissue, tex, cavity)
    _small_bowel(slab, b, fields, tissue, cavity)


def _table(slab, b, tissue):
    """The scanner table under the patient's back: two thin curved shells around a foam core (air here)."""
    y_tab = b.b_post + b.table_gap - 0.0005 * slab.X**2
    d = slab.Y - y_tab
    m = ((d > 0) & (d < 4) | (d > 28) & (d < 32)) & (np.abs(slab.X) < 220)
    m = np.broadcast_to(m, tissue.shape)
    tissue[m & (tissue == T.AIR)] = T.TABLE


def _bone(tissue, outer, core) -> None:
    """Paint a bone: cortical (``outer``) around cancellous (``outer & core``)."""
    tissue[outer] = T.BONE
    tissue[outer & core] = T.MARROW


def _spine_and_muscles(slab, b, tissue, cavity, inner):
    rx, ry = b.vert
    sy = b.spine_y
    canal_y = sy + ry + 9
    w = slab.win((-1e9, sy - ry - 12, -(rx + 90)), (1e9, canal_y + 62, rx + 90))
    if w is None:
        return
    Z, Y, X = slab.coords(w)
    tissue, cavity, inner = tissue[w], cavity[w], inner[w]
    phase = ((Z + b.level_phase) % b.level) / b.level  # 0..1 within one vertebra + disc, (n, 1, 1)
    in_disc = phase < b.disc / b.level
    body_r = (X / rx) ** 2 + ((Y - sy) / ry) ** 2
    vb = body_r < 1
    tissue[vb & in_disc] = T.DISC
    tissue[vb & ~in_disc] = T.BONE
    tissue[(body_r < (1 - CORTEX_MM / ry) ** 2) & ~in_disc] = T.MARROW
    ring = np.hypot(X, Y - canal_y)
    mid = (phase > 0.3) & (phase < 0.8)
    c = CORTEX_MM
    lamina = np.broadcast_to((ring < 15) & (ring > 9) & (Y > canal_y - 4), tissue.shape)
    _bone(tissue, lamina, (ring < 15 - c) & (ring > 9 + c) & (Y > canal_y - 4 + c))
    ax = np.abs(X)
    pedicle = (ax < 13) & (ax > 7) & (Y > sy + ry - 2) & (Y < canal_y) & mid
    _bone(tissue, pedicle, (ax < 13 - c) & (ax > 7 + c) & (Y > sy + ry - 2 + c) & (Y < canal_y - c))
    spinous = (ax < 4) & (Y > canal_y + 12) & (Y < canal_y + 45) & mid
    _bone(tissue, spinous, (ax < 4 - c) & (Y > canal_y + 12 + c) & (Y < canal_y + 45 - c))
    transverse = (np.abs(X) > 10) & (np.abs(X) < rx + 12) & (np.abs(Y - canal_y + 3) < 2.5)
    tissue[transverse & (phase > 0.47) & (phase < 0.6)] = T.RIB  # thin bone: rib-like HU
    tissue[np.broadcast_to(ring < 9, tissue.shape)] = T.CANAL
    # Paraspinal muscles (erector spinae and multifidus) behind the transverse processes, from the
    # spinous process out to ~80 mm; psoas beside the vertebral bodies (growing downward), quadratus
    # lumborum lateral to the psoas. Version 2 drew the paraspinal muscles 48 x 42 mm, centred 27 mm off
    # the midline; the real slab's (TotalSegmentator "autochthon") are 75-80 x 30-45 mm, 35-46 mm off
    # it, 2100-2600 mm2 a side, the widest muscle of the slice, right behind the kidneys.
    pr = np.clip(7 + (b.psoas_top - Z) * 0.12, 7, 27)
    below = Z < b.psoas_top
    hw, hd, behind = b.para
    for side in (-1, 1):
        para = (((X - side * (5 + 0.95 * hw)) / hw) ** 2 + ((Y - canal_y - behind) / hd) ** 2 < 1) & (Y > canal_y)
        tissue[para & inner & ~np.isin(tissue, (T.BONE, T.MARROW, T.CANAL))] = T.MUSCLE
        psoas = ((X - side * (rx + 0.8 * pr)) / pr) ** 2 + ((Y - sy + 2) / (0.85 * pr)) ** 2 < 1
        tissue[psoas & cavity & below] = T.MUSCLE
        ql = ((X - side * (rx + 2 * pr + 12)) / 15) ** 2 + ((Y - canal_y + 2) / 10) ** 2 < 1
        tissue[ql & cavity & below & (tissue == T.FAT)] = T.MUSCLE


def _ribs(slab, b, tissue, band):
    """Ribs leave the spine high and run down and forward along the inside of the body wall (``band``).

    Rib k leaves the spine at height ``rib_z + 28 k`` mm, runs down to its lowest point (90 mm
    lower) at the side and, as costal cartilage, up again toward the front. The lowest two ribs
    are short (floating ribs).
    """
    if slab.z[-1] < b.rib_z - 100 or slab.z[0] > b.rib_z + 28 * 7 + 6:
        return
    iz, iy, ix = np.nonzero(band)  # a thin shell: work on its voxels only
    ang = np.pi - np.abs(slab.PHI[0, iy, ix])  # 0 at the back, pi at the front
    drop = 90 * np.sin(np.clip(ang - 0.4, 0, None) / (np.pi - 0.4) * 0.75 * np.pi)
    t = (slab.z[iz] + drop - b.rib_z) / 28.0  # rib number, fractional
    k = np.rint(t)
    reach = np.deg2rad(np.minimum(80 + 22 * k, 175))
    hit = (np.abs(t - k) * 28 < 5.5) & (k >= 0) & (k < 8) & (ang > 0.4) & (ang < reach)
    tissue[iz[hit], iy[hit], ix[hit]] = T.RIB


def _iliac_wings(slab, b, tissue, cavity):
    """Below the iliac crests: a curved plate of bone on each side, iliacus muscle on its inner face."""
    if slab.z[0] > b.crest_z:
        return
    Z, Y, X = slab.Z, slab.Y, slab.X
    below = np.maximum(b.crest_z - Z, 0)
    radius = np.minimum(40 + 0.6 * below, 85)  # the wings flare out going down, (n, 1, 1)
    for side in (-1, 1):
        cx, cy = side * (b.vert[0] + 25), b.spine_y + 5
        d = np.hypot(X - cx, Y - cy)
        ang = np.arctan2(-(Y - cy), side * (X - cx))  # 0 lateral, + anterior, - posterior
        arc = (ang > -1.4) & (ang < 0.9) & (Z < b.crest_z) & cavity
        _bone(tissue, arc & (np.abs(d - radius) < 4), np.abs(d - radius) < 4 - CORTEX_MM)
        tissue[arc & (d < radius - 4) & (d > radius - 22) & (tissue == T.FAT)] = T.MUSCLE


def _vessels(slab, b, tissue):
    Z, Y, X = slab.Z, slab.Y, slab.X
    ax, ay, ar = b.aorta
    above = Z > b.bifurcation_z
    tissue[(np.hypot(X - ax, Y - ay) < ar) & above] = T.AORTA
    d = np.maximum(b.bifurcation_z - Z, 0)
    ix, iy, irx, iry = b.ivc
    d_v = np.maximum(b.bifurcation_z - 15 - Z, 0)
    tissue[(((X - ix) / irx) ** 2 + ((Y - iy) / iry) ** 2 < 1) & (d_v <= 0)] = T.IVC
    if slab.z[0] < b.bifurcation_z:
        for side in (-1, 1):
            tissue[(np.hypot(X - ax - side * 0.45 * d, Y - ay - 0.15 * d) < 0.65 * ar) & ~above] = T.AORTA
            tissue[(np.hypot(X - ix - side * 0.45 * d_v - 15, Y - iy - 0.1 * d_v) < 0.6 * irx) & (d_v > 0)] = T.IVC


def _stomach(slab, b, fields, tissue, cavity):
    hit = blob_inside(b.stomach, slab, fields)
    if hit is None:
        return
    w, m, r = hit
    m &= cavity[w] & (tissue[w] == T.FAT)
    content = m & (r < 1 - 5 / min(b.stomach.axes))
    tw = tissue[w]
    tw[m] = T.GUT_WALL
    gas_level = b.stomach.centre[1] - 0.3 * b.stomach.axes[1]  # supine: gas rises anteriorly
    tw[content] = T.GUT_FLUID
    tw[content & (slab.Y[:, w[1]] < gas_level)] = T.GAS


def _tube(slab, tissue, tex, cavity, fields, dist, r, w):
    """A colon segment in window ``w`` (``dist``: distance to its axis there): wall, mottled stool, gas."""
    tw, xw = tissue[w], tex[w]
    m = (dist < r) & cavity[w] & ((tw == T.FAT) | (tw == T.GUT_WALL))
    if not m.any():
        return
    tw[m] = T.GUT_WALL
    inner = m & (dist < r - 3)
    f = slab.sample(fields.fine, w)
    tw[inner] = T.STOOL
    xw[inner] = 45 * f[inner]
    tw[inner & (f > 0.7)] = T.GAS


def _colon(slab, b, fields, tissue, tex, cavity):
    ra, rt, rd = b.colon_r
    za, zt, zd = b.colon_z
    wig = 8 * fields.shape.sample(slab.z, np.array([0.0]), np.array([0.0]))  # (n, 1, 1) meander
    for top, r, cy, cx in ((za, ra, -0.1 * b.b_ant, -0.62 * b.a),  # ascending, right flank
                           (zd, rd, 0.05 * b.b_post, 0.68 * b.a)):  # descending, left flank
        w = slab.win((-1e9, cy - r - 10, cx - r - 10), (top, cy + r + 10, cx + r + 10))
        if w is not None:
            Z, Y, X = slab.coords(w)
            _tube(slab, tissue, tex, cavity, fields, np.hypot(X - cx, Y - cy - wig[w[0]]), r, w)
    # Transverse colon: runs left-right in front and sags in the middle.
    cy, half = -0.55 * b.b_ant, 0.65 * b.a
    w = slab.win((zt - 35 - rt, cy - rt, -half), (zt + rt, cy + rt, half))
    if w is not None:
        Z, Y, X = slab.coords(w)
        zc = zt - 35 * (1 - np.clip(np.abs(X) / (0.6 * b.a), 0, 1) ** 2)
        _tube(slab, tissue, tex, cavity, fields, np.hypot(Z - zc, Y - cy), rt, w)


def _small_bowel(slab, b, fields, tissue, cavity):
    """Small-bowel loops: blobs of a random field (~2 cm) with a thin enhancing wall, in the free fat.

    They fill the front of the abdomen below ``small_bowel_top``; both limits are wavy, not planes.
    """
    back = b.spine_y - b.vert[1] - 12
    w = slab.win((-1e9, -b.b_ant, -b.a), (b.small_bowel_top + 25, back + 25, b.a))
    if w is None:
        return
    tw = tissue[w]
    Z, Y, _ = slab.coords(w)
    wave = 15 * slab.sample(fields.shape, w)
    free = cavity[w] & (tw == T.FAT) & (Y < back + wave) & (Z < b.small_bowel_top + wave)
    if not free.any():
        return
    f = slab.sample(fields.bowel, w)
    tw[free & (f > 0.3)] = T.GUT_WALL
    lumen = free & (f > 0.5)
    tw[lumen] = T.GUT_FLUID
    tw[lumen & (slab.sample(fields.mid, w) > 1.2)] = T.GAS
    # Small mesenteric arteries: sparse bright dots in the fat between the loops.
    tw[free & (f < 0) & (slab.sample(fields.fine, w) > 2.3)] = T.ARTERY
