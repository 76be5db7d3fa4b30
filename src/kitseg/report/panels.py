"""Figures of the report: three orthogonal CT panels with contours and a measurement table per case,
and box plots of Dice per dataset. Pure matplotlib (``Figure`` + Agg canvas: no pyplot, no global state).

Display conventions: radiological (patient's right on the left of the picture); axial panels with
anterior at the top, coronal and sagittal with superior at the top, sagittal with anterior on the
left; pixels drawn to scale in mm (the spacing sets the aspect); soft-tissue window W400/L40.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from kitseg.metrics.tumors import tumor_components
from kitseg.report.measure import Measurements
from kitseg.volume import Volume

WINDOW_WIDTH, WINDOW_LEVEL = 400.0, 40.0  # soft-tissue window (HU)
# Okabe-Ito colour-blind-safe palette: kidney sky blue, tumor orange, cyst reddish purple.
COLOURS = {"kidney": "#56B4E9", "tumor": "#E69F00", "cyst": "#CC79A7"}
VIEW_MARGIN_MM = 30.0
_OUTLINE = [patheffects.withStroke(linewidth=3, foreground="black")]


def choose_slices(pred: np.ndarray, gt: np.ndarray | None, tumor: int = 2,
                  voxel_ml: float | None = None) -> tuple[tuple[int, int, int], str]:
    """(z, y, x) of the planes through the largest extent of the tumor, and what they go through.

    Each plane is the one where the structure's cross-section is largest: the largest ground-truth
    tumor when the prediction missed it (``kitseg.metrics.tumors``; ``voxel_ml`` sets the 0.1 ml
    minimum), else the predicted tumor, else the ground-truth tumor, else the predicted kidney, else
    the ground-truth kidney, else the centre.
    """
    candidates = []
    if gt is not None:
        missed = _largest_missed_tumor(pred == tumor, gt == tumor, voxel_ml)
        if missed is not None:
            candidates.append((missed, "the largest ground-truth tumor, which the prediction missed"))
    candidates.append((pred == tumor, "the predicted tumor"))
    if gt is not None:
        candidates.append((gt == tumor, "the ground-truth tumor"))
    candidates.append((pred > 0, "the predicted kidneys"))
    if gt is not None:
        candidates.append((gt > 0, "the ground-truth kidneys"))
    for mask, what in candidates:
        if mask.any():
            idx = tuple(int(np.argmax(np.count_nonzero(mask, axis=tuple(a for a in range(3) if a != ax))))
                        for ax in range(3))
            return idx, f"planes through the largest cross-sections of {what}"  # type: ignore[return-value]
    return tuple(s // 2 for s in pred.shape), "central planes (nothing segmented)"  # type: ignore[return-value]


def _largest_missed_tumor(pred_t: np.ndarray, gt_t: np.ndarray, voxel_ml: float | None) -> np.ndarray | None:
    """The mask of the largest ground-truth tumor when no predicted tumor overlaps it, else None."""
    if not gt_t.any():
        return None
    gt_comp, gt_sizes = tumor_components(gt_t, voxel_ml)
    if gt_sizes.size <= 1:
        return None
    big = gt_comp == int(np.argmax(gt_sizes[1:])) + 1
    pred_comp, _ = tumor_components(pred_t, voxel_ml)
    return None if (pred_comp[big] > 0).any() else big


_OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}


def file_slice_numbers(vol: Volume, index: tuple[int, int, int]) -> tuple[int, int, int]:
    """1-based slice numbers of canonical ``index`` (z, y, x) counted in the order the file stores that axis
    (what a viewer's slice slider shows), so a reader can find the plane in ITK-SNAP or 3D Slicer."""
    if vol.source is None or len(vol.source.axis_codes) != 3:
        return tuple(i + 1 for i in index)  # type: ignore[return-value]
    out = []
    for code, i in zip(vol.axis_codes, index):
        for axis, file_code in enumerate(vol.source.axis_codes):
            if file_code == code:
                out.append(i + 1)
                break
            if file_code == _OPPOSITE[code]:
                out.append(vol.source.shape[axis] - i)
                break
        else:
            out.append(i + 1)
    return tuple(out)  # type: ignore[return-value]


def _view_box(fg: np.ndarray, spacing: Sequence[float]) -> tuple[slice, slice, slice]:
    """Bounding box of the foreground plus VIEW_MARGIN_MM, or the whole volume."""
    if not fg.any():
        return tuple(slice(0, s) for s in fg.shape)  # type: ignore[return-value]
    out = []
    for ax in range(3):
        hit = np.flatnonzero(np.any(fg, axis=tuple(a for a in range(3) if a != ax)))
        m = int(np.ceil(VIEW_MARGIN_MM / spacing[ax]))
        out.append(slice(max(int(hit[0]) - m, 0), min(int(hit[-1]) + 1 + m, fg.shape[ax])))
    return tuple(out)  # type: ignore[return-value]


def _extent(rows: slice, cols: slice, sp_rows: float, sp_cols: float, origin: str) -> tuple[float, ...]:
    left, right = (cols.start - 0.5) * sp_cols, (cols.stop - 0.5) * sp_cols
    lo, hi = (rows.start - 0.5) * sp_rows, (rows.stop - 0.5) * sp_rows
    return (left, right, hi, lo) if origin == "upper" else (left, right, lo, hi)


def _letters(ax, top: str, bottom: str, left: str, right: str) -> None:
    for text, xy, ha, va in ((top, (0.5, 0.98), "center", "top"), (bottom, (0.5, 0.02), "center", "bottom"),
                             (left, (0.02, 0.5), "left", "center"), (right, (0.98, 0.5), "right", "center")):
        ax.text(*xy, text, transform=ax.transAxes, ha=ha, va=va, color="white", fontsize=13, fontweight="bold",
                path_effects=_OUTLINE)


def _scale_bar(ax) -> None:
    """A 5 cm (or 2 / 1 cm) bar in the lower right corner, drawn in axes coordinates."""
    x0, x1 = ax.get_xlim()
    width = abs(x1 - x0)
    length = 50.0 if width > 120 else (20.0 if width > 50 else 10.0)
    frac = length / width
    ax.plot([0.95 - frac, 0.95], [0.06, 0.06], transform=ax.transAxes, color="white", linewidth=3,
            solid_capstyle="butt", path_effects=_OUTLINE)
    ax.text(0.95 - frac / 2, 0.08, f"{length / 10:g} cm", transform=ax.transAxes, color="white", ha="center",
            va="bottom", fontsize=10, path_effects=_OUTLINE)


def _panel(ax, ct: np.ndarray, layers: list[tuple[np.ndarray, str, str]], extent, origin: str, letters, title: str,
           field: tuple[float, float]):
    """Draw one view; ``field`` = (width, height) in mm shown, the same for all views (one scale)."""
    ax.set_facecolor("black")
    ax.imshow(ct, cmap="gray", vmin=WINDOW_LEVEL - WINDOW_WIDTH / 2, vmax=WINDOW_LEVEL + WINDOW_WIDTH / 2,
              extent=extent, origin=origin, interpolation="bilinear")
    for mask, colour, style in layers:
        if mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linestyles=[style],
                       linewidths=[2.0 if style == "solid" else 1.6], extent=extent, origin=origin)
    cx, cy = (extent[0] + extent[1]) / 2, (extent[2] + extent[3]) / 2
    ax.set_xlim(cx - field[0] / 2, cx + field[0] / 2)
    flip = -1 if extent[2] > extent[3] else 1  # origin "upper": rows grow downward
    ax.set_ylim(cy - flip * field[1] / 2, cy + flip * field[1] / 2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=12)
    _letters(ax, *letters)
    _scale_bar(ax)


def _structures(labels: np.ndarray, tumor: int, cyst: int | None) -> list[tuple[str, np.ndarray]]:
    out = [("kidney", labels > 0), ("tumor", labels == tumor)]
    if cyst is not None:
        out.append(("cyst", labels == cyst))
    return out


def _fmt(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _table_rows(m: Measurements) -> list[str]:
    rows = [f"{m.right_kidney_ml:.0f} / {m.left_kidney_ml:.0f}", _fmt(m.kidney_with_masses_ml, 0),
            _fmt(m.tumor_ml), str(m.tumor_count), _fmt(m.largest_tumor_ml),
            _fmt(m.largest_tumor_diameter_mm, 0), m.tumor_side]
    if m.cyst_ml is not None:
        rows.append(_fmt(m.cyst_ml))
    return rows


TABLE_LABELS = ["Kidney incl. tumor, patient's right / left (ml)", "Kidney incl. tumor, total (ml)",
                "Tumor volume, all tumors (ml)", "Number of tumors", "Largest tumor: volume (ml)",
                "Largest tumor: max. 3D diameter (mm)", "Tumor side (patient)", "Cyst volume (ml)"]


def case_figure(image: Volume, pred: Volume, gt: Volume | None, pred_m: Measurements, gt_m: Measurements | None,
                title: str, scores: dict[str, float] | None = None, tumor: int = 2, cyst: int | None = None,
                note: str | None = None) -> bytes:
    """PNG bytes of :func:`render_case`."""
    return _png(render_case(image, pred, gt, pred_m, gt_m, title, scores, tumor, cyst, note))


def render_case(image: Volume, pred: Volume, gt: Volume | None, pred_m: Measurements, gt_m: Measurements | None,
                title: str, scores: dict[str, float] | None = None, tumor: int = 2, cyst: int | None = None,
                note: str | None = None) -> Figure:
    """Axial, coronal and sagittal panels (``fig.axes[:3]``) with contours, a legend and a measurement table.

    ``note``: appended to the Dice line (the report puts the tumors found / missed there)."""
    ct, lab = image.array, pred.array
    gt_arr = None if gt is None else gt.array
    (z, y, x), through = choose_slices(lab, gt_arr, tumor, pred.voxel_volume_ml)
    sz, sy, sx = image.spacing
    fg = lab > 0 if gt_arr is None else (lab > 0) | (gt_arr > 0)
    bz, by, bx = _view_box(fg, image.spacing)
    fz, fy, fx = file_slice_numbers(image, (z, y, x))
    views = [  # name, 2D index into (z, y, x), rows, cols, row/col spacing, origin, letters T B L R
        (f"Axial · slice {fz} of {ct.shape[0]}", (z, by, bx), by, bx, sy, sx, "upper", ("A", "P", "R", "L")),
        (f"Coronal · slice {fy} of {ct.shape[1]}", (bz, y, bx), bz, bx, sz, sx, "lower", ("S", "I", "R", "L")),
        (f"Sagittal · slice {fx} of {ct.shape[2]}", (bz, by, x), bz, by, sz, sy, "lower", ("S", "I", "A", "P")),
    ]
    extents = [_extent(v[2], v[3], v[4], v[5], v[6]) for v in views]
    field = (max(abs(e[1] - e[0]) for e in extents), max(abs(e[3] - e[2]) for e in extents))
    panel_h = float(np.clip(4.8 * field[1] / field[0], 2.5, 7.0))  # inches; panels are ~4.8 in wide
    head, foot = 1.15, 2.3
    height = head + panel_h + 0.4 + foot
    fig = Figure(figsize=(15, height), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 3, height_ratios=[panel_h, foot], hspace=0.4 / ((panel_h + foot) / 2), wspace=0.04,
                            left=0.02, right=0.98, top=1 - head / height, bottom=0.1 / height)
    for i, ((name, index, _r, _c, _sr, _sc, origin, letters), extent) in enumerate(zip(views, extents)):
        layers = [(m[index], COLOURS[s], "solid") for s, m in _structures(lab, tumor, cyst)]
        if gt_arr is not None:
            layers += [(m[index], COLOURS[s], "dashed") for s, m in _structures(gt_arr, tumor, cyst)]
        _panel(fig.add_subplot(grid[0, i]), ct[index], layers, extent, origin, letters, name, field)
    subtitle = (f"{through[0].upper()}{through[1:]}; zoomed to the kidneys, all views at one scale; "
                f"CT window W{WINDOW_WIDTH:.0f}/L{WINDOW_LEVEL:.0f} HU")
    if scores:
        subtitle += "\nDice vs ground truth: " + " · ".join(f"{k} {v:.3f}" for k, v in scores.items())
    if note:
        subtitle += ("; " if scores else "\n") + note
    fig.suptitle(title, fontsize=16, fontweight="bold", y=1 - 0.12 / height, va="top")
    fig.text(0.5, 1 - 0.6 / height, subtitle, ha="center", va="center", fontsize=11)

    legend_ax = fig.add_subplot(grid[1, 0])
    legend_ax.axis("off")
    names = {"kidney": "Kidney (outline incl. tumor)", "tumor": "Tumor", "cyst": "Cyst"}
    handles = [Line2D([], [], color=COLOURS[s], lw=2.5, label=f"{names[s]} — prediction")
               for s in (["kidney", "tumor"] + (["cyst"] if cyst is not None else []))]
    if gt_arr is not None:
        handles += [Line2D([], [], color=COLOURS[s], lw=2, ls="--", label=f"{names[s]} — ground truth (dashed)")
                    for s in (["kidney", "tumor"] + (["cyst"] if cyst is not None else []))]
    legend_ax.legend(handles=handles, loc="upper left", fontsize=11, frameon=False, title="Contours",
                     title_fontproperties={"weight": "bold", "size": 12})
    table_ax = fig.add_subplot(grid[1, 1:])
    table_ax.axis("off")
    pred_rows = _table_rows(pred_m)
    labels = TABLE_LABELS[:len(pred_rows)]
    if cyst is not None:  # KiTS21/23: the kidney rows include cysts too
        labels = [lbl.replace("incl. tumor", "incl. tumor and cysts") for lbl in labels]
    cells = [[lbl, p] for lbl, p in zip(labels, pred_rows)]
    columns = ["Measurement", "Prediction"]
    if gt_m is not None:
        cells = [row + [g] for row, g in zip(cells, _table_rows(gt_m))]
        columns.append("Ground truth")
    table = table_ax.table(cellText=cells, colLabels=columns, loc="upper center", cellLoc="left",
                           colWidths=[0.55] + [0.2] * (len(columns) - 1))
    table.auto_set_font_size(False)
    table.set_fontsize(10.5)
    table.scale(1.0, 1.25)
    for (r, _c), cell in table.get_celld().items():
        if r == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor("#eeeeee")
    return fig


def dice_boxplot(values: dict[str, list[float]]) -> bytes:
    """PNG bytes: one box per metric with every case as a dot (Dice axis 0..1)."""
    fig = Figure(figsize=(max(4.0, 1.9 * len(values) + 1.5), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    names = list(values)
    data = [values[n] for n in names]
    ax.boxplot(data, widths=0.5, showfliers=False, medianprops={"color": "black", "linewidth": 2})
    rng = np.random.default_rng(0)  # jitter only; fixed seed for reproducible pictures
    for i, vals in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(vals)), vals, s=18, color="#0072B2", alpha=0.75, zorder=3)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice (1 = perfect overlap)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Dice per case (box: quartiles, line: median; dots: cases)", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
