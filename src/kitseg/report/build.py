"""`make_report`: per-case PNG panels, ``measurements.csv`` and one self-contained ``index.html``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from kitseg._atomic import atomic_path, write_text
from kitseg.datasets import DatasetSpec, find_images
from kitseg.errors import KitsegError
from kitseg.io import check_same_grid, read_label, read_volume
from kitseg.metrics.evaluate import evaluate_case, is_kits19_like, label_files, spec_for
from kitseg.report.html import CaseEntry, render_page
from kitseg.report.measure import Measurements, measure
from kitseg.report.panels import case_figure, dice_boxplot


def _dice_of(row, spec: DatasetSpec) -> dict[str, float]:
    if row.kits19 is not None and is_kits19_like(spec):
        return {"kidney incl. tumor": row.kits19.kidney_dice, "tumor": row.kits19.tumor_dice}
    return {name.replace("_", " "): r.dice for name, r in row.regions.items()}


def _detection_note(row) -> str | None:
    d = row.detection if row is not None else None
    if d is None or (d.gt_tumors == 0 and d.false_positive_tumors == 0):
        return None
    text = f"ground-truth tumors: {d.detected_tumors} found, {d.missed_tumors} missed" if d.gt_tumors else ""
    if d.false_positive_tumors:
        text += ("; " if text else "") + f"{d.false_positive_tumors} false-positive tumor(s)"
    return text


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _measurements_csv(cases: list[CaseEntry]) -> str:
    buf = io.StringIO()
    rows = []
    for c in cases:
        row = {"case_id": c.case_id, **{f"pred_{k}": v for k, v in c.pred.model_dump().items()}}
        if c.gt is not None:
            row.update({f"gt_{k}": v for k, v in c.gt.model_dump().items()})
        if c.detection is not None:
            row.update({"found_tumors": c.detection.detected_tumors, "missed_tumors": c.detection.missed_tumors,
                        "false_positive_tumors": c.detection.false_positive_tumors})
        if c.dice:
            row.update({f"dice_{k.replace(' ', '_')}": v for k, v in c.dice.items()})
        rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else r[k] for k in columns})
    return buf.getvalue()


def make_report(pred_dir: str | Path, images_dir: str | Path, out_dir: str | Path, gt_dir: str | Path | None = None,
                spec: DatasetSpec | None = None, title: str | None = None, progress: bool = False) -> Path:
    """Write ``<case>.png`` for every prediction, ``measurements.csv`` and ``index.html`` into ``out_dir``.

    Predictions and ground truth are matched by case id as in ``kitseg evaluate``; the CT of each case
    comes from ``images_dir`` (a KiTS/nnU-Net dataset or a folder of images). Returns the page's path.
    """
    out_dir = Path(out_dir)
    spec = spec if spec is not None else (spec_for(gt_dir) if gt_dir is not None else spec_for(images_dir))
    preds = label_files(pred_dir)
    if not preds:
        raise KitsegError("no prediction files found (expected case_XXXXX.nii.gz or case_XXXXX/segmentation.nii.gz)",
                          pred_dir)
    images = dict(find_images(images_dir))
    gts = label_files(gt_dir) if gt_dir is not None else {}
    tumor = spec.labels.get("tumor", 2)
    cyst = spec.labels.get("cyst")
    items = sorted(preds.items())
    if progress:
        from rich.progress import track
        items = track(items, description="report", transient=True)
    cases: list[CaseEntry] = []
    for cid, pred_path in items:
        if cid not in images:
            raise KitsegError(f"no CT image for case {cid} in {images_dir}", pred_path)
        if gt_dir is not None and cid not in gts:
            raise KitsegError(f"no ground truth for case {cid} in {gt_dir}", pred_path)
        image = read_volume(images[cid])
        pred = read_label(pred_path, spec.label_values)
        check_same_grid(image, pred, f"case {cid} CT and prediction")
        gt = None
        if gt_dir is not None:
            gt = read_label(gts[cid], spec.label_values)
            check_same_grid(image, gt, f"case {cid} CT and ground truth")
        pred_m = measure(pred, image, tumor, cyst)
        gt_m: Measurements | None = measure(gt, image, tumor, cyst) if gt is not None else None
        row = evaluate_case(pred, gt, spec, {}, cid, distances=False) if gt is not None else None
        dice = _dice_of(row, spec) if row is not None else None
        png = case_figure(image, pred, gt, pred_m, gt_m, cid, dice, tumor, cyst, _detection_note(row))
        _write_bytes(out_dir / f"{cid}.png", png)
        cases.append(CaseEntry(cid, pred_m, gt_m, dice, png, row.detection if row is not None else None))
    box = None
    if any(c.dice for c in cases):
        names = list(dict.fromkeys(k for c in cases if c.dice for k in c.dice))
        box = dice_boxplot({n: [c.dice[n] for c in cases if c.dice and n in c.dice] for n in names})
    sources = {"predictions": str(pred_dir), "CT images": str(images_dir)}
    if gt_dir is not None:
        sources["ground truth"] = str(gt_dir)
    page = render_page(cases, title or f"Kidney and kidney-tumor segmentation report ({spec.name} labels)",
                       sources, box)
    write_text(out_dir / "measurements.csv", _measurements_csv(cases))
    write_text(out_dir / "index.html", page)
    return out_dir / "index.html"
