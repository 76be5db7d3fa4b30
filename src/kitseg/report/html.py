"""One self-contained HTML page per dataset: summary, box plots, a per-case table and every case's
panels, with all pictures embedded (base64 PNG), so the single file can be mailed or archived."""

from __future__ import annotations

import base64
import datetime as _dt
import html
from dataclasses import dataclass

import numpy as np

from kitseg import __version__
from kitseg.metrics.evaluate import DetectionScores
from kitseg.report.measure import Measurements

LOW_DICE = 0.5  # table cells below this get a marker, so a reader finds the failures


@dataclass(frozen=True)
class CaseEntry:
    case_id: str
    pred: Measurements
    gt: Measurements | None
    dice: dict[str, float] | None  # label -> Dice vs ground truth
    png: bytes
    detection: DetectionScores | None = None  # tumors found / missed / false positive (with ground truth)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:24px auto;max-width:1500px;
color:#1a1a1a;padding:0 16px;line-height:1.4}
h1{font-size:26px;margin-bottom:4px} h2{font-size:20px;border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta{color:#555;font-size:13px} .warn{background:#fff4e0;border-left:5px solid #E69F00;padding:8px 12px;margin:12px 0}
table{border-collapse:collapse;font-size:14px} th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0} td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafafa} td.low,tr:nth-child(even) td.low{background:#fde2e2;font-weight:bold}
.kv td{text-align:left} .case img{max-width:100%;border:1px solid #ddd} .case{margin-bottom:28px}
.legend span{display:inline-block;width:28px;height:0;border-top:3px solid;margin:0 6px 3px 12px;vertical-align:middle}
.small{font-size:13px;color:#444} a{color:#0072B2}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _num(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _dice_cell(v: float | None) -> str:
    if v is None:
        return "<td>—</td>"
    if v < LOW_DICE:
        return f'<td class="low" title="below {LOW_DICE}">{v:.3f} ▼</td>'
    return f"<td>{v:.3f}</td>"


def _found_cell(d: DetectionScores | None) -> str:
    if d is None or d.gt_tumors == 0:
        return "<td>—</td>"
    text = f"{d.detected_tumors} / {d.missed_tumors}"
    if d.missed_tumors:
        return f'<td class="low" title="{d.missed_tumors} ground-truth tumor(s) missed">{text} ▼</td>'
    return f"<td>{text}</td>"


def _summary_rows(cases: list[CaseEntry], dice_names: list[str]) -> list[tuple[str, str]]:
    n = len(cases)
    with_tumor = sum(c.pred.tumor_count > 0 for c in cases)
    rows = [("Cases", str(n)), ("Cases with a predicted tumor", f"{with_tumor} of {n}")]
    tumor_ml = [c.pred.tumor_ml for c in cases if c.pred.tumor_count > 0]
    if tumor_ml:
        rows.append(("Predicted tumor volume, median (range)",
                     f"{np.median(tumor_ml):.1f} ml ({min(tumor_ml):.1f}–{max(tumor_ml):.1f})"))
    for name in dice_names:
        vals = [c.dice[name] for c in cases if c.dice and name in c.dice]
        if vals:
            rows.append((f"Dice {name}: median (mean; min–max)",
                         f"{np.median(vals):.3f} ({np.mean(vals):.3f}; {min(vals):.3f}–{max(vals):.3f})"))
    dets = [c.detection for c in cases if c.detection is not None]
    if dets:  # the definitions of metrics.csv (kitseg.metrics.tumors)
        pos = [d for d in dets if d.gt_tumors > 0]
        neg = [d for d in dets if d.gt_tumors == 0]
        rows.append(("Cases with a ground-truth tumor in which a ground-truth tumor was found",
                     f"{sum(d.outcome == 'TP' for d in pos)} of {len(pos)}"))
        gt_n = sum(d.gt_tumors for d in dets)
        rows.append(("Ground-truth tumors found / missed",
                     f"{sum(d.detected_tumors for d in dets)} / {sum(d.missed_tumors for d in dets)} of {gt_n}"))
        rows.append(("False-positive tumors (overlapping no ground-truth tumor)",
                     str(sum(d.false_positive_tumors for d in dets))))
        if neg:
            rows.append(("Cases without ground-truth tumor and without predicted tumor",
                         f"{sum(d.outcome == 'TN' for d in neg)} of {len(neg)}"))
    return rows


def render_page(cases: list[CaseEntry], title: str, sources: dict[str, str], boxplot: bytes | None) -> str:
    """The report page as one HTML string (pictures embedded)."""
    dice_names = list(dict.fromkeys(k for c in cases if c.dice for k in c.dice))
    has_gt = any(c.gt is not None for c in cases)
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           f"<style>{_CSS}</style></head><body id='top'>", f"<h1>{html.escape(title)}</h1>",
           f"<p class='meta'>Made by kitseg {__version__} on {now}.<br>"
           + " · ".join(f"{html.escape(k[0].upper() + k[1:])}: <code>{html.escape(v)}</code>"
                        for k, v in sources.items()) + "</p>",
           "<div class='warn'><b>Research software.</b> These segmentations were made automatically and have not "
           "been checked by a radiologist. Do not use them for clinical decisions without review.</div>",
           "<h2>Summary</h2><table class='kv'>"]
    out += [f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in _summary_rows(cases, dice_names)]
    out.append("</table>")
    if boxplot is not None:
        out.append(f"<p>{_img(boxplot, 'Box plots of Dice per case')}</p>")
    out.append("<h2>Cases</h2><p class='small'>Click a case to see its images. Volumes in millilitres (ml), "
               "diameters in millimetres (mm). \"Right\" and \"left\" are the patient's."
               + (f" Dice below {LOW_DICE} is marked ▼." if dice_names else "") + "</p>")
    head = ["Kidney incl. tumor<br>right / left (ml)", "Tumor<br>volume (ml)", "Number of<br>tumors",
            "Largest tumor<br>diameter (mm)", "Tumor side"]
    groups = [("", 1), ("Prediction" if has_gt else "Segmentation", len(head))]
    if has_gt:
        head += ["Tumor<br>volume (ml)", "Largest tumor<br>diameter (mm)", "Tumor side", "Tumors found /<br>missed"]
        groups.append(("Ground truth", 4))
    head += [html.escape(n) for n in dice_names]
    if dice_names:
        groups.append(("Dice (prediction vs ground truth)", len(dice_names)))
    out.append("<table><tr>" + "".join(f"<th colspan='{n}' style='text-align:center'>{g}</th>" for g, n in groups)
               + "</tr><tr>" + "<th>Case</th>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>")
    for c in cases:
        m = c.pred
        cells = [f"<td><a href='#{html.escape(c.case_id)}'>{html.escape(c.case_id)}</a></td>",
                 f"<td>{m.right_kidney_ml:.0f} / {m.left_kidney_ml:.0f}</td>", f"<td>{_num(m.tumor_ml)}</td>",
                 f"<td>{m.tumor_count}</td>", f"<td>{_num(m.largest_tumor_diameter_mm, 0)}</td>",
                 f"<td>{m.tumor_side}</td>"]
        if has_gt:
            g = c.gt
            cells += [f"<td>{_num(g.tumor_ml) if g else '—'}</td>",
                      f"<td>{_num(g.largest_tumor_diameter_mm, 0) if g else '—'}</td>",
                      f"<td>{g.tumor_side if g else '—'}</td>", _found_cell(c.detection)]
        cells += [_dice_cell(c.dice.get(n) if c.dice else None) for n in dice_names]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    out.append("<h2>Images</h2><p class='legend small'>Contour colours: <span style='border-color:#56B4E9'></span>"
               "kidney (outline including tumor), <span style='border-color:#E69F00'></span>tumor"
               + (", <span style='border-color:#CC79A7'></span>cyst" if any(c.pred.cyst_ml is not None for c in cases)
                  else "")
               + (". Solid lines: prediction; dashed lines: ground truth" if has_gt else "")
               + ". Radiological convention: the patient's right is on the left of each picture (letters R/L, A/P, "
                 "S/I at the edges). Slice numbers count from 1 in the order the slices are stored in the image "
                 "file, as a viewer's slice slider does.</p>")
    for c in cases:
        out.append(f"<section class='case' id='{html.escape(c.case_id)}'><h3>{html.escape(c.case_id)} "
                   f"<a class='small' href='#top'>back to top</a></h3>{_img(c.png, c.case_id + ' panels')}</section>")
    out.append(_DEFINITIONS)
    out.append("</body></html>")
    return "\n".join(out)


_DEFINITIONS = """<h2>Definitions</h2><ul class='small'>
<li><b>Kidney incl. tumor</b>: all segmented kidney tissue including tumor (and cysts), per side of the patient.
The side is decided by the body midline (centre of the body on the slices with the kidneys).</li>
<li><b>Largest tumor diameter</b>: the longest straight-line distance across the largest tumor (in 3D, any direction),
measured between voxel centres; it can be short by up to one voxel size (often 0.8&ndash;5 mm).</li>
<li><b>Tumor side</b>: side of each tumor's centre; "both" when tumors lie on both sides.</li>
<li><b>Dice</b>: 2&nbsp;|A&cap;B| / (|A|+|B|) between prediction and ground truth; 1 = identical, 0 = no overlap.
KiTS19 convention: "kidney" is kidney including tumor.</li>
<li><b>Tumors</b>: connected tumor pieces of at least 0.1 ml; smaller pieces count in the tumor volume but not as
tumors. A ground-truth tumor is <b>found</b> when a predicted tumor overlaps it and <b>missed</b> otherwise; a
predicted tumor overlapping no ground-truth tumor is a false positive. The same definitions as metrics.csv.</li>
</ul>"""
