"""`kitseg fingerprint DATA_DIR`: dataset statistics (spacings, shapes, intensities, classes) as JSON."""

from __future__ import annotations

from pathlib import Path

import click

from kitseg.datasets import open_dataset
from kitseg.preprocessing.fingerprint import compute_fingerprint, summarize, write_fingerprint


@click.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Where to write the JSON (default: DATA_DIR/fingerprint.json).")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="Cases processed at once.")
@click.option("--samples-per-case", type=click.IntRange(1), default=10000, show_default=True,
              help="Voxels sampled per case and region for the percentiles (nnU-Net: 10000).")
@click.option("--roi-margin-mm", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Margin around the kidney box for the 'roi' intensity statistics.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the voxel sampling.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def fingerprint(data_dir: Path, output: Path | None, workers: int, samples_per_case: int, roi_margin_mm: float,
                seed: int, no_progress: bool) -> None:
    """Compute the fingerprint of the dataset in DATA_DIR and write fingerprint.json.

    Per case: shape, spacing, label voxel counts, kidney bounding boxes in mm. Dataset: median
    spacing and shape, class fractions, and intensity statistics (mean, std, 0.05/0.5/99.5/99.95
    percentiles, 1 HU histogram) of the foreground (label > 0), of whole images and of the kidney
    ROI. Label-only datasets get geometry and class statistics only.
    """
    dataset = open_dataset(data_dir)
    fp = compute_fingerprint(dataset, workers=workers, progress=not no_progress,
                             samples_per_case=samples_per_case, roi_margin_mm=roi_margin_mm, seed=seed)
    path = write_fingerprint(fp, output or data_dir / "fingerprint.json")
    click.echo(summarize(fp))
    click.echo(f"wrote {path}")
