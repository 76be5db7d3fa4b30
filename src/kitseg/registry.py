"""The registries: recipe name -> implementation, for losses, samplers, inference modes and ops.

A recipe names its loss, sampler, inference mode, post-processing ops and final op; the recipe
schema (``kitseg.recipes.schema``) validates each name against the registry here, so a misspelt or
unknown name is refused while the recipe loads, with the list of known names. Entries point at
their implementation as ``"module:attribute"`` and are imported on first use: this module and the
schema stay free of torch, and the schema (a lower layer) never imports the layers that implement
the names. Adding a loss, sampler, mode or op is one new function (or file) plus one line here.
Networks have their own registry, ``kitseg.nets.NETWORKS``.
"""

from __future__ import annotations

import importlib
from typing import Any

from kitseg.errors import KitsegError


class Registry:
    """Names of one kind (``loss``, ``sampler``, ...) -> their implementation, imported on use."""

    def __init__(self, kind: str, entries: dict[str, str]):
        self.kind = kind
        self._entries = dict(entries)
        self._loaded: dict[str, Any] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def check(self, name: str) -> str:
        """``name`` when it is registered; else a KitsegError listing the known names."""
        if name not in self._entries:
            raise KitsegError(f"unknown {self.kind} {name!r}; known: {', '.join(self._entries)}")
        return name

    def get(self, name: str) -> Any:
        """The implementation registered as ``name``."""
        if name not in self._loaded:
            module, _, attribute = self._entries[self.check(name)].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attribute)
        return self._loaded[name]


LOSSES = Registry("loss", {
    "dice_ce": "kitseg.losses:DICE_CE",
    "dice": "kitseg.losses:DICE",
    "ce": "kitseg.losses:CE",
    "weighted_ce": "kitseg.losses:WEIGHTED_CE",
    "focal_dice": "kitseg.losses:FOCAL_DICE",
    "region_dice": "kitseg.losses:REGION_DICE",
    "bce_dice": "kitseg.losses:BCE_DICE",
})

SAMPLERS = Registry("sampler", {
    "patch": "kitseg.training.sampling:patch_center",
    "slices": "kitseg.training.sampling:slice_center",
    "whole": "kitseg.training.sampling:whole_center",
})

INFERENCE_MODES = Registry("inference mode", {
    "sliding_window": "kitseg.inference.modes:sliding_window_mode",
    "majority_vote": "kitseg.inference.modes:majority_vote_mode",
    "z_windows": "kitseg.inference.modes:z_windows_mode",
    "slices25d": "kitseg.inference.modes:slices25d_mode",
    "whole": "kitseg.inference.modes:whole_mode",
})

# Per-stage post-processing: op(labels, context, **params) -> labels, on the stage's grid.
STAGE_OPS = Registry("post-processing op", {
    "largest_components": "kitseg.stages.ops:largest_components",
    "kidneys_by_side": "kitseg.stages.ops:kidneys_by_side",
    "median": "kitseg.stages.ops:median",
    "tumor_in_kidney": "kitseg.stages.ops:tumor_in_kidney",
    "drop_small_tumors": "kitseg.stages.ops:drop_small_tumors",
    "crf": "kitseg.stages.ops:crf",
})

# The recipe's final step: op(final, outputs, ct) -> uint8 labels on the CT's grid.
FINAL_OPS = Registry("final op", {
    "argmax": "kitseg.stages.ops:final_argmax",
    "merge": "kitseg.stages.ops:final_merge",
    "tunet_algorithm1": "kitseg.stages.ops:final_tunet_algorithm1",
})

__all__ = ["FINAL_OPS", "INFERENCE_MODES", "LOSSES", "Registry", "SAMPLERS", "STAGE_OPS"]
