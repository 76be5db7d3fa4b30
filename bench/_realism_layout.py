"""The layout around the kidneys, measured the same way on the real slab and on rendered phantoms.

Used by ``bench_realism.py --layout``. Per axial slice through a kidney (canonical arrays: y toward
posterior, x toward the patient's left), relative to the vertebral body of that slice:

- *kidney depth*: the kidney's centroid behind (+) or in front of (-) the vertebral body's centre (mm);
- *kidney off midline*: the kidney centroid's distance from the spinal canal's centre, left-right (mm);
- *back soft tissue*: the area (mm²) of one side's soft tissue behind the spinal canal, within 100 mm of
  the midline, by HU alone (-30 to 150 HU: the paraspinal muscles, and the back's wall muscles in both
  images), and its centroid's depth behind the vertebral body's centre;
- *vertebral body to back skin*: from the vertebral body's centre to the body outline at the midline (mm).

Only the spinal canal, the vertebral bodies and the kidneys are taken from labels (the real slab's
TotalSegmentator labels; the renderer's tissue map); the soft tissue and the body outline are found by
HU in both images alike. Each measure is the median over a case's slices (each side a slice of its own);
the table gives the median and range over the cases.
"""

from __future__ import annotations

import numpy as np

SOFT_HU = (-30.0, 150.0)
BACK_HALF_WIDTH_MM = 100.0
VB_HALF_WIDTH_MM = 35.0
MIN_KIDNEY_VOXELS = 10
MEASURES = {
    "kidney_depth_mm": "kidney centre behind the vertebral body's centre (mm; - in front)",
    "kidney_off_midline_mm": "kidney centre off the midline (mm)",
    "back_soft_tissue_mm2": "soft tissue behind the spinal canal, one side (mm²)",
    "back_soft_tissue_depth_mm": "its centre behind the vertebral body's centre (mm)",
    "vb_to_back_skin_mm": "vertebral body's centre to the back's skin at the midline (mm)",
}


def slice_measures(hu: np.ndarray, canal: np.ndarray, vertebra: np.ndarray, kidney: np.ndarray,
                   body: np.ndarray, spacing) -> dict[str, list[float]]:
    """Per-slice (and per-side) values of every measure in MEASURES over one CT."""
    _, sy, sx = (float(s) for s in spacing)
    out: dict[str, list[float]] = {k: [] for k in MEASURES}
    soft = (hu >= SOFT_HU[0]) & (hu <= SOFT_HU[1]) & body
    ys, xs = np.mgrid[0: hu.shape[1], 0: hu.shape[2]]
    for z in range(hu.shape[0]):
        if not canal[z].any():
            continue
        cy, cx = (float(v) for v in np.argwhere(canal[z]).mean(axis=0))
        vb = vertebra[z] & (ys < cy - 3.0 / sy) & (np.abs(xs - cx) * sx < VB_HALF_WIDTH_MM)
        if vb.sum() < 5:
            continue
        vby = float(ys[vb].mean())
        sided = False
        for side in (xs < cx, xs > cx):
            k = kidney[z] & side
            if k.sum() < MIN_KIDNEY_VOXELS:
                continue
            sided = True
            out["kidney_depth_mm"].append((ys[k].mean() - vby) * sy)
            out["kidney_off_midline_mm"].append(abs(xs[k].mean() - cx) * sx)
            back = soft[z] & side & (ys > cy) & (np.abs(xs - cx) * sx < BACK_HALF_WIDTH_MM) & ~vertebra[z]
            out["back_soft_tissue_mm2"].append(back.sum() * sy * sx)
            if back.any():
                out["back_soft_tissue_depth_mm"].append((ys[back].mean() - vby) * sy)
        column = body[z][:, int(round(cx))]
        if sided and column.any():
            out["vb_to_back_skin_mm"].append((np.flatnonzero(column).max() - vby) * sy)
    return out


def case_medians(values: dict[str, list[float]]) -> dict[str, float | None]:
    return {k: (round(float(np.median(v)), 1) if v else None) for k, v in values.items()}


def summary(cases: list[dict[str, float | None]]) -> dict[str, dict]:
    """Median and range over cases of each measure."""
    out = {}
    for k in MEASURES:
        v = [c[k] for c in cases if c.get(k) is not None]
        out[k] = {"median": round(float(np.median(v)), 1), "min": min(v), "max": max(v)} if v else None
    return out


def real_layout(hu: np.ndarray, organs: np.ndarray, names: dict[str, str], body: np.ndarray, spacing) -> dict:
    """The real slab's measures (one case), from its organ labels ``names`` (id -> TotalSegmentator name)."""
    def ids(*prefixes):
        return [int(i) for i, n in names.items() if n.startswith(prefixes)]

    canal = np.isin(organs, ids("spinal_cord"))
    vertebra = np.isin(organs, ids("vertebrae_"))
    kidney = np.isin(organs, ids("kidney_"))
    values = slice_measures(hu, canal, vertebra, kidney, body, spacing)
    autochthon = [float((organs[z] == i).sum()) * spacing[1] * spacing[2]
                  for i in ids("autochthon_") for z in range(organs.shape[0]) if (organs[z] == i).any()]
    return {"case": case_medians(values), "slices": len(values["kidney_depth_mm"]),
            "autochthon_mm2_median": round(float(np.median(autochthon)), 1) if autochthon else None}


def synthetic_layout(hu: np.ndarray, tissue: np.ndarray, body: np.ndarray, spacing) -> dict[str, float | None]:
    """One rendered phantom's measures (case medians), from the tissue map the renderer painted."""
    from kitseg.synth.tissues import Tissue as T

    kidney_tissues = [T.CORTEX, T.MEDULLA, T.URINE, T.CYST, T.NECROSIS, T.TUMOR_A, T.TUMOR_B, T.TUMOR_C]
    values = slice_measures(hu, tissue == T.CANAL, np.isin(tissue, [T.BONE, T.MARROW, T.DISC]),
                            np.isin(tissue, kidney_tissues), body, spacing)
    return case_medians(values)


def table(real: dict, rendered: dict) -> list[str]:
    lines = ["| measure | real slab | rendered: median (range over cases) |", "|---|---|---|"]
    for k, what in MEASURES.items():
        r, s = real["case"].get(k), rendered.get(k)
        lines.append(f"| {what} | {'-' if r is None else f'{r:.0f}'} | "
                     + ("-" if s is None else f"{s['median']:.0f} ({s['min']:.0f} to {s['max']:.0f})") + " |")
    return lines
