"""`kitseg export RUN_DIR -o model.kitseg`: one shareable file with everything predict needs."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The model file to write (name ending in .kitseg).")
@click.option("--folds", default=None, metavar="LIST",
              help="Folds to include, e.g. 0 or 0,2 (default: every trained fold).")
@click.option("--which", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which checkpoint of each fold.")
@click.option("--note", default="", help="A sentence for the model card (e.g. where the model may be used).")
def export(run_dir: Path, output: Path, folds: str | None, which: str, note: str) -> None:
    """Write the model of a run folder to one file (a zip): recipe, fingerprint, label convention, the
    folds' weights (safetensors) and a model card (training data, validation figures, kitseg version).

    `kitseg predict --model model.kitseg` gives the same labels as the run folder; `kitseg info
    model.kitseg` prints the model card. A hostile or damaged file is refused with one line.
    """
    from kitseg.models import describe
    from kitseg.models import export as export_model
    from kitseg.training.train_recipe import parse_folds

    chosen = None if folds is None else parse_folds(folds, 1000)
    export_model(run_dir, output, folds=chosen, which=which, note=note)
    click.echo(describe(output))
    click.echo(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)")
