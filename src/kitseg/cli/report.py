"""`kitseg report`: PNG panels per case and one self-contained HTML page for a folder of predictions."""

from __future__ import annotations

from pathlib import Path

import click

from kitseg.datasets import PRESETS
from kitseg.metrics.evaluate import spec_for
from kitseg.report import make_report


@click.command()
@click.option("--pred", "pred_dir", type=click.Path(path_type=Path), required=True,
              help="Predicted label maps: case_XXXXX.nii.gz or case_XXXXX/segmentation.nii.gz.")
@click.option("--images", "images_dir", type=click.Path(path_type=Path), required=True,
              help="The CT images: a KiTS/nnU-Net dataset or a folder of case_XXXXX images.")
@click.option("--gt", "gt_dir", type=click.Path(path_type=Path), default=None,
              help="Ground truth to compare with (dashed contours, Dice, box plots).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--labels", type=click.Choice(sorted(PRESETS)), default=None,
              help="Label set (default: the dataset.json of --gt or --images, else kits19).")
@click.option("--title", default=None, help="Title of the page.")
def report(pred_dir: Path, images_dir: Path, gt_dir: Path | None, out_dir: Path, labels: str | None,
           title: str | None) -> None:
    """Write OUT/<case>.png (axial, coronal and sagittal CT panels through the tumor with kidney and tumor
    contours, and a table of volumes, largest tumor diameter and tumor side), OUT/measurements.csv and
    OUT/index.html (summary, per-case table, Dice box plots when --gt is given; pictures embedded)."""
    spec = spec_for(gt_dir if gt_dir is not None else images_dir, labels)
    page = make_report(pred_dir, images_dir, out_dir, gt_dir, spec, title, progress=True)
    click.echo(f"wrote {page}")
