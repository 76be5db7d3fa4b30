"""`kitseg synth OUT_DIR`: a synthetic KiTS-layout CT dataset (procedural, or rendered for real label maps)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--cases", type=click.IntRange(1), default=None,
              help="Number of cases (default: 10; with --from-masks: every label map).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: the same seed gives the same dataset.")
@click.option("--size", type=click.Choice(["tiny", "small", "full"]), default="small", show_default=True,
              help="tiny 32x64x64 (tests), small 64x128x128 (CPU demo), full 512x512 slices (benchmarks).")
@click.option("--layout", type=click.Choice(["kits19", "kits23"]), default="kits19", show_default=True,
              help="kits19: labels 0/1/2, cysts are kidney; kits23: cysts are label 3.")
@click.option("--geometry", type=click.Choice(["kits19", "ras"]), default="kits19", show_default=True,
              help="File orientation: KiTS19's (I,P,L in nibabel) or RAS.")
@click.option("--from-masks", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A KiTS-layout folder of segmentation files: render one CT per label map.")
@click.option("--downsample", type=click.IntRange(1), default=1, show_default=True,
              help="With --from-masks: divide the in-plane size by this factor (labels by majority vote).")
@click.option("--unenhanced", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Share of the cases rendered without contrast (drawn per case; the others are late "
              "arterial): 1 for an unenhanced dataset, 0.5 for a mix.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes (default: up to 2).")
@click.option("--preview", is_flag=True, help="Also write OUT_DIR/preview.png (slices with label contours).")
@click.option("--reference", type=click.Path(exists=True, path_type=Path), default=None,
              help="With --preview: a real CT shown in the first row, in the same window, for comparison.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def synth(out_dir: Path, cases: int | None, seed: int, size: str, layout: str, geometry: str,
          from_masks: Path | None, downsample: int, unenhanced: float, workers: int | None, preview: bool,
          reference: Path | None, no_progress: bool) -> None:
    """Write a synthetic abdominal CT dataset with kidneys, tumors and cysts to OUT_DIR.

    Cases are case_XXXXX/imaging.nii.gz + segmentation.nii.gz with dataset.json and synth.json
    (what was drawn). Late-arterial contrast HU values (--unenhanced: without contrast for a share of
    the cases), scanner noise and partial volume; see
    docs/SYNTH.md for what is modelled and its limits.
    """
    from kitseg.synth import make_dataset, write_preview

    paths = make_dataset(out_dir, cases=cases, seed=seed, size=size, layout=layout, from_masks=from_masks,
                         progress=not no_progress, geometry=geometry, downsample=downsample, workers=workers,
                         unenhanced=unenhanced)
    click.echo(f"wrote {len(paths)} cases to {out_dir}")
    if preview:
        click.echo(f"wrote {write_preview(out_dir, out_dir / 'preview.png', reference=reference)}")
