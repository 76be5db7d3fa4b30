"""`kitseg info PATH`: what a file, a DICOM folder or a dataset holds."""

from __future__ import annotations

from pathlib import Path

import click

from kitseg.describe import describe_dataset, describe_volume


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
def info(path: Path) -> None:
    """Print shape, spacing, axis codes, intensity range and label counts of PATH.

    PATH is an image file (NIfTI, NRRD, MHA/MHD), a DICOM series folder, a dataset folder
    (KiTS19/21/23 case_XXXXX folders, or nnU-Net imagesTr/labelsTr with dataset.json), or a model
    file written by `kitseg export` (its model card is printed).
    """
    if path.is_file() and path.name.lower().endswith(".kitseg"):
        from kitseg.models import describe

        click.echo(describe(path))
        return
    click.echo(describe_dataset(path) if _is_dataset(path) else describe_volume(path))


def _is_dataset(path: Path) -> bool:
    if not path.is_dir():
        return False
    return (path / "dataset.json").exists() or (path / "imagesTr").is_dir() or any(
        p.name.startswith("case_") for p in path.iterdir() if p.is_dir())
