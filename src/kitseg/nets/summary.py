"""One row per registered network at its paper size: parameters, receptive field, where it comes from."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kitseg.errors import KitsegError
from kitseg.nets import NETWORKS, build_network
from kitseg.nets.receptive import count_parameters, receptive_field

RF_METHOD = ("measured: support of d(centre output)/d(input) in a linear, positive copy of the network "
             "(norms, activations and SE removed, max pooling as average pooling)")


@dataclass(frozen=True)
class NetSummary:
    name: str
    paper: str
    dims: int
    activation: str
    in_channels: int
    out_channels: int
    patch: tuple[int, ...]
    parameters: int
    receptive_field: tuple[int | None, ...] | None  # None: not computed; an axis None: global

    def rf_text(self) -> str:
        if self.receptive_field is None:
            return "-"
        if all(r is None for r in self.receptive_field):
            return "global"
        return "x".join("global" if r is None else str(r) for r in self.receptive_field)


def summarize(name: str, receptive: bool = True) -> NetSummary:
    """Build ``name`` at its paper size and count its parameters; measure its receptive field if asked.

    The receptive field is measured on a copy with ``base_features=1`` (it does not depend on the
    width) and the paper's depth, pooling and kernels.
    """
    if name not in NETWORKS:
        raise KitsegError(f"unknown network {name!r}; registered networks: {', '.join(NETWORKS)}")
    info = NETWORKS[name]
    with torch.device("meta"):  # shapes only: counting parameters allocates nothing
        net = build_network(name, info.paper_in_channels, info.paper_out_channels, **info.paper_params)
    rf = None
    if receptive:
        narrow = build_network(name, info.paper_in_channels, info.paper_out_channels,
                               **{**info.paper_params, "base_features": 1})
        rf = receptive_field(narrow, info.paper_in_channels * getattr(narrow, "context_slices", 1), start=512)
    return NetSummary(name, info.paper, info.dims, info.activation, info.paper_in_channels, info.paper_out_channels,
                      info.paper_patch, count_parameters(net), rf)


def markdown_table(rows: list[NetSummary]) -> str:
    """The rows as a Markdown table (for docs/METHODS.md)."""
    lines = ["| network | paper | dims | in -> out | patch | parameters | receptive field (voxels) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        patch = "x".join(str(p) for p in r.patch)
        lines.append(f"| `{r.name}` | {r.paper} | {r.dims}D | {r.in_channels} -> {r.out_channels} ({r.activation}) "
                     f"| {patch} | {r.parameters:,} | {r.rf_text()} |")
    return "\n".join(lines) + "\n"
