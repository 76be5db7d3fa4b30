"""`kitseg evaluate PRED_DIR GT_DIR`: KiTS metrics per case (metrics.csv) and for the dataset (summary.json)."""

from __future__ import annotations

from pathlib import Path

import click

from kitseg.datasets import PRESETS
from kitseg.metrics.evaluate import Summary, evaluate_folder, spec_for
from kitseg.metrics.surface import KITS_TOLERANCES_MM


@click.command()
@click.argument("pred_dir", type=click.Path(path_type=Path))
@click.argument("gt_dir", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for metrics.csv and summary.json (default: PRED_DIR).")
@click.option("--labels", type=click.Choice(sorted(PRESETS)), default=None,
              help="Label set and regions (default: GT_DIR/dataset.json, else kits19).")
@click.option("--tolerances", type=click.Choice(sorted(KITS_TOLERANCES_MM)), default="kits23", show_default=True,
              help="Surface Dice tolerances in mm of the KiTS21 or KiTS23 evaluation.")
@click.option("--allow-missing", is_flag=True, help="Evaluate only the predicted cases when GT_DIR has more.")
@click.option("--no-distances", is_flag=True, help="Skip HD95 and mean surface distance (faster).")
def evaluate(pred_dir: Path, gt_dir: Path, out_dir: Path | None, labels: str | None, tolerances: str,
             allow_missing: bool, no_distances: bool) -> None:
    """Compare predicted label maps in PRED_DIR with the ground truth in GT_DIR.

    Cases are matched by id: case_XXXXX.nii.gz or case_XXXXX/segmentation.nii.gz on either side (GT_DIR
    may be a KiTS or nnU-Net dataset). Writes metrics.csv (one row per case: KiTS19 Dice and composite,
    Dice / Surface Dice / HD95 / mean surface distance per region, tumor detection, volumes in ml) and
    summary.json (means, medians, detection counts). See docs/EVALUATION.md for the definitions.
    """
    spec = spec_for(gt_dir, labels)
    out_dir = pred_dir if out_dir is None else out_dir
    summary = evaluate_folder(pred_dir, gt_dir, out_dir, spec, tolerances=tolerances, allow_missing=allow_missing,
                              distances=not no_distances, progress=True)
    click.echo(format_summary(summary))
    click.echo(f"wrote {out_dir / 'metrics.csv'} and {out_dir / 'summary.json'}")


def format_summary(summary: Summary) -> str:
    """A few lines for the terminal: mean (median) of the headline metrics."""
    lines = [f"{summary.n_cases} case(s), label set {summary.label_set}"
             + (f", {len(summary.missing_predictions)} GT case(s) without prediction skipped"
                if summary.missing_predictions else "")]
    keys = [k for k in summary.mean if k.startswith("kits19_") or k.endswith(("_dice", "_hd95_mm", "_msd_mm"))]
    for k in keys:
        m, md = summary.mean[k], summary.median[k]
        if m is not None:
            lines.append(f"  {k:<36} mean {m:8.4f}   median {md:8.4f}   (n={summary.n_defined[k]})")
    d = summary.detection
    if d is not None:
        def fmt(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3f}"
        lines.append(f"  tumor detection: {d.detected_tumors}/{d.gt_tumors} tumors found "
                     f"(sensitivity {fmt(d.lesion_sensitivity)}), {d.missed_tumors} missed, "
                     f"{d.false_positive_tumors} false-positive tumor(s); "
                     f"cases TP {d.tp_cases} FN {d.fn_cases} FP {d.fp_cases} TN {d.tn_cases}, "
                     f"case specificity {fmt(d.case_specificity)}")
    return "\n".join(lines)
