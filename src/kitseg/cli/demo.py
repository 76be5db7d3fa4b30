"""`kitseg demo`: synthetic data -> tiny cascade -> predictions -> metrics -> report."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("-o", "--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("kitseg_demo"),
              show_default=True, help="Folder for the data, run, predictions, metrics and report.")
@click.option("--train-cases", type=click.IntRange(min=5), default=16, show_default=True)
@click.option("--test-cases", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the tiny recipe's epochs.")
@click.option("--size", type=click.Choice(["tiny", "small"]), default="small", show_default=True,
              help="Synthetic case size: small 64x128x128 (the demo), tiny 32x64x64 (a quick check).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a value of the tiny recipe, as in kitseg train (repeatable).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def demo(out: Path, train_cases: int, test_cases: int, seed: int, epochs: int | None, size: str, device: str,
         overrides: tuple[str, ...], no_progress: bool) -> None:
    """Make synthetic CTs, train a tiny default cascade, predict held-out cases, evaluate, report.

    Takes a few minutes on a 2-core CPU. Rerunning continues an interrupted run.
    """
    from kitseg.demo import run_demo

    r = run_demo(out, train_cases=train_cases, test_cases=test_cases, seed=seed, size=size, epochs=epochs,
                 device=device, overrides=list(overrides), progress=not no_progress)
    click.echo(f"\nheld-out synthetic cases: kidney Dice {r.kidney_dice:.3f}, tumor Dice {r.tumor_dice:.3f}, "
               f"composite {r.composite:.3f}  ({r.seconds / 60:.1f} min)")
    click.echo(f"metrics: {r.out_dir / 'evaluation' / 'metrics.csv'}")
    click.echo(f"report:  {r.report}")
