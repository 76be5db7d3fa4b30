"""`kitseg nets [NAME...]`: the registered networks at paper size, with parameters and receptive field."""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table


@click.command()
@click.argument("names", nargs=-1)
@click.option("--rf/--no-rf", "rf", default=False, show_default=True,
              help="Also measure each network's receptive field (about 80 s and 3 GB of memory for all of them "
              "on a CPU; a progress bar shows which network is being measured).")
@click.option("--markdown", is_flag=True, help="Print a Markdown table (as in docs/METHODS.md).")
def nets(names: tuple[str, ...], rf: bool, markdown: bool) -> None:
    """List the registered networks (or only NAMES) built at their paper size.

    Shows each network's paper and section, dims, output activation, input -> output channels,
    the paper's patch and the parameter count, in a second or two. --rf adds the receptive field in
    voxels per axis (z, y, x), measured as the support of the gradient of an output voxel with
    respect to the input (kitseg.nets.receptive explains how).
    """
    from kitseg.nets import NETWORKS  # imports torch and MONAI: only when the command runs
    from kitseg.nets.summary import RF_METHOD, markdown_table, summarize

    chosen = list(names) or list(NETWORKS)
    rows = []
    with Progress(transient=True, console=Console(stderr=True), disable=not rf) as progress:
        task = progress.add_task("receptive fields", total=len(chosen))
        for name in chosen:
            progress.update(task, description=f"receptive field of {name}")
            rows.append(summarize(name, receptive=rf))
            progress.advance(task)
    if markdown:
        click.echo(markdown_table(rows), nl=False)
        return
    table = Table(title="kitseg networks (paper size)",
                  caption=f"receptive field: {RF_METHOD}" if rf else "receptive field: add --rf to measure it")
    for col in ("network", "paper", "dims", "in -> out", "patch", "parameters", "receptive field"):
        table.add_column(col, justify="right" if col == "parameters" else "left")
    for r in rows:
        table.add_row(r.name, r.paper, f"{r.dims}D", f"{r.in_channels} -> {r.out_channels} {r.activation}",
                      "x".join(map(str, r.patch)), f"{r.parameters:,}", r.rf_text())
    Console(width=200).print(table)
