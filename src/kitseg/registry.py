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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kitseg.errors import KitsegError


class Registry:
    """Names of one kind (``loss``, ``sampler``, ...) -> their implementation, imported on use."""

    def __init__(self, kind: str, entries: dict[str, str], params: dict[str, type[BaseModel]] | None = None):
        self.kind = kind
        self._entries = dict(entries)
        self._params = dict(params or {})
        self._loaded: dict[str, Any] = {}

    def check_params(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` when its parameter model (if ``name`` has one) accepts them; else a KitsegError
        naming the parameter and the accepted ones."""
        model = self._params.get(self.check(name))
        if model is None:
            return params
        try:
            model.model_validate(params)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(params)"
            what = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
            raise KitsegError(f"{self.kind} {name!r}: {what} {where!r}; its parameters: "
                              f"{', '.join(model.model_fields) or 'none'}") from None
        return params

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

class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


Connectivity = Literal[6, 18, 26]


class LargestComponentsParams(_Params):
    n: int = Field(ge=1)
    connectivity: Connectivity = 26
    foreground: list[int] | None = None


class KidneysBySideParams(_Params):
    min_ml: float = Field(10.0, ge=0)
    max_ml: float | None = Field(None, gt=0)
    max_anterior_mm: float = 25.0
    large_ml: float = Field(500.0, ge=0)
    large_max_anterior_mm: float = 45.0
    body_hu: float = -500.0
    connectivity: Connectivity = 26
    foreground: list[int] | None = None


class TumorInKidneyParams(_Params):
    kidney: int = 1
    tumor: int = 2
    connectivity: Connectivity = 26


class DropSmallTumorsParams(_Params):
    min_ml: float = Field(0.0, ge=0)
    min_fraction: float = Field(0.0, ge=0, le=1)
    kidney: int = 1
    tumor: int = 2
    connectivity: Connectivity = 26


class ClassThresholdParams(_Params):
    cls: str = "tumor"
    min_prob: float = Field(gt=0, lt=1)


class CrfParams(_Params):
    iterations: int = Field(5, ge=1)
    smooth_sigma_mm: float = Field(3.0, gt=0)
    smooth_weight: float = Field(3.0, ge=0)
    appearance_sigma_mm: float = Field(10.0, gt=0)
    appearance_sigma_hu: float = Field(20.0, gt=0)
    appearance_weight: float = Field(5.0, ge=0)


# Per-stage post-processing: op(labels, context, **params) -> labels, on the stage's grid; each op's
# parameter model is checked when the recipe loads.
STAGE_OPS = Registry("post-processing op", {
    "largest_components": "kitseg.stages.ops:largest_components",
    "kidneys_by_side": "kitseg.stages.ops:kidneys_by_side",
    "median": "kitseg.stages.ops:median",
    "tumor_in_kidney": "kitseg.stages.ops:tumor_in_kidney",
    "drop_small_tumors": "kitseg.stages.ops:drop_small_tumors",
    "class_threshold": "kitseg.stages.ops:class_threshold",
    "crf": "kitseg.stages.ops:crf",
}, params={"largest_components": LargestComponentsParams, "kidneys_by_side": KidneysBySideParams,
           "median": _Params, "tumor_in_kidney": TumorInKidneyParams, "drop_small_tumors": DropSmallTumorsParams,
           "class_threshold": ClassThresholdParams, "crf": CrfParams})

# Ops that read a stage's probabilities and grid, so they cannot run in final.postprocess (the CT's grid, labels only).
PROBABILITY_OPS = frozenset({"crf", "class_threshold"})

# The recipe's final step: op(final, outputs, ct) -> uint8 labels on the CT's grid.
FINAL_OPS = Registry("final op", {
    "argmax": "kitseg.stages.ops:final_argmax",
    "merge": "kitseg.stages.ops:final_merge",
    "tunet_algorithm1": "kitseg.stages.ops:final_tunet_algorithm1",
})

__all__ = ["FINAL_OPS", "INFERENCE_MODES", "LOSSES", "PROBABILITY_OPS", "Registry", "SAMPLERS", "STAGE_OPS"]
