"""Profiles: a recipe scaled to a machine (``load_recipe(..., profile=...)``).

- ``paper``: the recipe as written;
- ``tiny``: a check of the whole path in minutes: the recipe's ``tiny`` section, or ``generic_tiny``
  when it has none;
- ``cpu``: the best model 30 minutes of training on 2 CPU cores can give: the recipe's ``cpu`` section
  (docs/METHODS.md lists each recipe's values).
"""

from __future__ import annotations

from kitseg.recipes.schema import Recipe

PROFILES = ("paper", "tiny", "cpu")  # paper: the recipe as written


def generic_tiny(recipe: Recipe) -> dict:
    """``--tiny`` for a recipe without a ``tiny`` section: every stage gets its network's tiny
    parameters (``kitseg.nets.NETWORKS[name].tiny_params``), 2 epochs of 2 iterations, batch size
    at most 2 and a patch of at most 32 voxels per axis (a multiple of the tiny network's divisor)."""
    from kitseg.nets import NETWORKS, build_network

    out: dict = {}
    for s in recipe.stages:
        key = f"stages.{s.name}"
        params = {**s.network.params, **(NETWORKS[s.network.name].tiny_params if s.network.name in NETWORKS else {})}
        out[f"{key}.network.params"] = params
        out[f"{key}.epochs"] = 2
        out[f"{key}.iterations_per_epoch"] = 2
        out[f"{key}.batch_size"] = min(2, s.batch_size)
        if s.patch_size is not None and s.network.name in NETWORKS:
            net = build_network(s.network.name, s.in_channels, s.target.out_channels, **params)
            div = tuple(net.size_divisor)
            out[f"{key}.patch_size"] = [max(d, min(p, 32) // d * d) for p, d in zip(s.patch_size, div)]
    return out


__all__ = ["PROFILES", "generic_tiny"]
