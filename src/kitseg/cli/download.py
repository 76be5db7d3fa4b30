"""`kitseg download`: the official KiTS19/KiTS23 CT imaging into OUT/case_XXXXX/imaging.nii.gz."""

from __future__ import annotations

from pathlib import Path

import click

from kitseg.download import CHALLENGES, download_cases, parse_cases


@click.command()
@click.option("--challenge", type=click.Choice(sorted(CHALLENGES)), default="kits19", show_default=True,
              help="Which challenge's published cases: kits19 (0-299), kits23 (0-299, 400-588).")
@click.option("--cases", "cases", default="all", show_default=True, metavar="SPEC",
              help="Case ids: '3-5', '0-9,20', 'all', 'train' or 'test' (KiTS19 210-299, imaging only).")
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (KiTS19 layout). Use your clone's data/ (kits19) or dataset/ (kits23) "
                   "to put the imaging beside the labels.")
@click.option("--base-url", default=None, metavar="URL",
              help="A mirror holding images/case_XXXXX.nii.gz [default: the hub repository "
                   "neheller/KiTS-Challenge-Imaging at main; pin a revision with .../resolve/<commit>].")
@click.option("--retries", type=click.IntRange(min=0), default=5, show_default=True,
              help="Retries per file after network errors (the count restarts when a retry makes progress).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60, show_default=True,
              help="Seconds without any answer from the server before a request counts as failed.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars (on stderr).")
def download(challenge: str, cases: str, out: Path, base_url: str | None, retries: int, timeout: float,
             progress: bool) -> None:
    """Download the official CT imaging, resumably, with retries and integrity checks.

    Interrupted downloads continue where they stopped when rerun; complete, verified files are
    skipped. Imaging only: the labels are in the challenge's git repository (see docs/DOWNLOAD.md).
    The data are licensed CC BY-NC-SA 4.0. Exit code 2 when any case failed.
    """
    report = download_cases(challenge, parse_cases(cases, challenge), out, base_url=base_url, retries=retries,
                            timeout=timeout, progress=progress)
    click.echo(report.summary())
    if report.failed:
        raise click.exceptions.Exit(2)
