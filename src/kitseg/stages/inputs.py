"""The input channels of a stage, built the same way in training and at inference (CONTRACTS).

For ``stage.inputs`` (typed ``StageInput``s, written ``["ct", "mask:localize"]`` in a recipe):

- ``ct``: the CT normalized with the stage's IntensitySpec, on the stage's grid (cropped if set);
- ``mask:<s>``: 1.0 where stage s found foreground (any of its classes), else 0.0;
- ``prob:<s>``: stage s's foreground probability in [0, 1];
- ``masked_ct:<s>``: the CT where stage s found foreground, ``background_value(ct)`` elsewhere
  (the 2.5D VNet's "multiply the mask image and original image", ResUNet/VNet paper section 3.1).

Training derives the priors from the ground truth (``priors_from_label``); inference passes stage
s's prediction resampled to this stage's grid. Both then call ``assemble_inputs``.
"""

from __future__ import annotations

import numpy as np

from kitseg.errors import KitsegError
from kitseg.recipes.schema import Stage, TargetSpec
from kitseg.stages.targets import foreground_labels


def background_value(ct: np.ndarray) -> float:
    """The fill value outside the mask of a ``masked_ct`` channel: the darkest normalized CT value."""
    return float(np.min(ct)) if np.size(ct) else 0.0


def priors_from_label(label: np.ndarray, stage: Stage, targets: dict[str, TargetSpec]) -> dict[str, np.ndarray]:
    """Training priors: for each stage s this stage reads, (label in s's foreground labels) as float32."""
    out = {}
    for s in stage.prior_stages:
        if s not in targets:
            raise KitsegError(f"stage {stage.name!r} reads stage {s!r}, whose target is unknown")
        out[s] = np.isin(label, foreground_labels(targets[s])).astype(np.float32)
    return out


def pad_values(x: np.ndarray, stage: Stage) -> list[float]:
    """What inference pads each input channel of ``x`` (``assemble_inputs``'s output) with where a
    window reaches past the volume: what training's patches hold there (``kitseg.training.sampling``
    pads the CT with its darkest value, so a masked CT's fill is that value too, and priors are 0
    outside the label). Padding with anything else shifts instance-norm statistics: a network
    trained on kidney boxes smaller than its patch then over-grows the kidney."""
    return [0.0 if item.kind in ("mask", "prob") else background_value(x[c])  # a masked CT's darkest value
            for c, item in enumerate(stage.typed_inputs)]                    # is its fill, the CT's darkest


def assemble_inputs(ct: np.ndarray, priors: dict[str, np.ndarray], stage: Stage,
                    background: float | None = None) -> np.ndarray:
    """Stack the stage's input channels: (len(stage.inputs), *ct.shape) float32.

    ``ct``: the normalized CT (any spatial shape); ``priors``: stage name -> mask or probability of
    the same shape; ``background``: the masked-CT fill value (default ``background_value(ct)``).
    """
    ct = np.asarray(ct, np.float32)
    channels = []
    for item in stage.typed_inputs:
        kind, ref = item.kind, item.stage
        if kind == "ct":
            channels.append(ct)
            continue
        if ref not in priors:
            raise KitsegError(f"stage {stage.name!r} needs the output of stage {ref!r} as input {item!r}")
        prior = np.asarray(priors[ref], np.float32)
        if prior.shape != ct.shape:
            raise KitsegError(f"input {item!r} has shape {prior.shape}, the CT {ct.shape}: not on the same grid")
        if kind == "mask":
            channels.append((prior > 0.5).astype(np.float32))
        elif kind == "prob":
            channels.append(np.clip(prior, 0.0, 1.0))
        else:  # masked_ct
            fill = background_value(ct) if background is None else background
            channels.append(np.where(prior > 0.5, ct, np.float32(fill)).astype(np.float32))
    return np.stack(channels)
