"""The recipe's ``final`` step: the stages' outputs -> one uint8 label map on the input's grid.

- ``argmax``: the labels of ``final.stage`` (already restored to the original grid).
- ``merge`` (3D ResUNet + 2.5D VNet, sections 2-3): kidney from ``kidney_stage``; tumor (the
  tumor stage's labels) written over it, only inside that kidney.
- ``tunet_algorithm1`` (TuNet 3.5, Algorithm 1): thresholds and region growing on the W-Net
  (``whole_stage``) and T-Net (``tumor_stage``) probabilities, multiplied by the L-Net mask
  (``mask_stage``), computed on the W-Net's grid, then restored to the original grid.

Probabilities for ``--save-probabilities`` (``probabilities_on_grid``) are resampled from each
entry's grid onto the original grid one channel at a time, in float16.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kitseg.errors import KitsegError
from kitseg.inference.mapping import box_on_grid, paste_labels, resample_to_grid, shifted, to_entry_grid, unpadded
from kitseg.recipes.schema import FinalSpec

if TYPE_CHECKING:
    from kitseg.inference.cascade import StageOutput


def foreground_probability(probs: np.ndarray, kind: str) -> np.ndarray:
    """P(any class) from a stage's probabilities: 1 - background (softmax) or the largest sigmoid."""
    if kind == "softmax":
        return 1.0 - probs[0]
    return probs.max(axis=0)


def final_labels(final: FinalSpec, outputs: dict[str, StageOutput], shape, affine) -> np.ndarray:
    """The recipe's final label map (uint8) on the original grid ``shape``/``affine``."""
    last = list(outputs)[-1]
    if final.op == "argmax":
        return outputs[final.stage or last].labels
    if final.op == "merge":
        if not (final.kidney_stage and final.tumor_stage):
            raise KitsegError("final op 'merge' needs kidney_stage and tumor_stage")
        kidney = outputs[final.kidney_stage].labels
        tumor = outputs[final.tumor_stage].labels
        out = (kidney > 0).astype(np.uint8)
        inside = (tumor > 0) & (out > 0)
        out[inside] = tumor[inside]
        return out
    if final.op == "tunet_algorithm1":
        return _tunet(final, outputs, shape, affine)
    raise KitsegError(f"unknown final op {final.op!r}")


def _tunet(final: FinalSpec, outputs: dict[str, StageOutput], shape, affine) -> np.ndarray:
    from kitseg.postprocessing import tunet_algorithm1

    if not (final.whole_stage and final.tumor_stage):
        raise KitsegError("final op 'tunet_algorithm1' needs whole_stage and tumor_stage (and mask_stage)")
    whole, tumor = outputs[final.whole_stage], outputs[final.tumor_stage]
    out = np.zeros(tuple(shape), dtype=np.uint8)
    for entry in whole.entries:
        rec = entry.record
        grid_shape, grid_aff = rec.shape, rec.resample.padded_affine
        p_whole = foreground_probability(entry.probs, whole.stage.target.kind)
        p_tumor = np.zeros(grid_shape, np.float32)
        for t in tumor.entries:
            p = foreground_probability(t.probs, tumor.stage.target.kind)
            np.maximum(p_tumor, resample_to_grid(p, t.record.resample.padded_affine, grid_shape, grid_aff),
                       out=p_tumor)
        mask = None
        if final.mask_stage:
            mask = to_entry_grid(outputs[final.mask_stage].labels > 0, rec) > 0
        labels = tunet_algorithm1(p_whole, p_tumor, mask)
        paste_labels(unpadded(labels, rec), rec.resample.affine, out, affine)
    return out


def probability_stage(final: FinalSpec, outputs: dict[str, StageOutput]) -> str:
    """The stage whose probabilities ``--save-probabilities`` writes (the one giving the final labels)."""
    return final.stage or final.tumor_stage or final.whole_stage or list(outputs)[-1]


def probabilities_on_grid(output: StageOutput, shape, affine, dtype=np.float16) -> np.ndarray:
    """A stage's probabilities (K, *shape) on the original grid; outside its boxes: background.

    Each channel of each entry is resampled (linear) onto the part of the original grid that the
    entry covers; the (K, *shape) result is the only full-size array (float16 by default).
    """
    k = output.entries[0].probs.shape[0]
    out = np.zeros((k, *shape), dtype=dtype)
    if output.stage.target.kind == "softmax":
        out[0] = 1
    for entry in output.entries:
        rec = entry.record
        probs = unpadded(entry.probs, rec)
        box = box_on_grid(probs.shape[1:], rec.resample.affine, shape, affine, margin=0)
        if box is None:
            continue
        dst_shape = [s.stop - s.start for s in box]
        dst_aff = shifted(affine, [s.start for s in box])
        inside = resample_to_grid(np.ones(probs.shape[1:], np.float32), rec.resample.affine, dst_shape, dst_aff,
                                  "nearest", 0.0) > 0
        for c in range(k):
            p = resample_to_grid(probs[c], rec.resample.affine, dst_shape, dst_aff, "linear", 0.0)
            region = out[(c, *box)]
            region[inside] = p[inside]
    return out


__all__ = ["final_labels", "foreground_probability", "probabilities_on_grid", "probability_stage"]
