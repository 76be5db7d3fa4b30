"""The ops a recipe names: per-stage post-processing steps and the final step (``kitseg.registry``).

Per-stage ops (``stage.postprocess``, registered in ``STAGE_OPS``) run on one entry's grid:
``op(labels, context, **params) -> labels``; ``context`` (`OpContext`) gives what some of them need
besides the labels: the probabilities (``crf``), the CT in HU and the grid's geometry
(``crf``, ``kidneys_by_side``) and the stage's target (the default foreground labels).

The final op (``recipe.final``, registered in ``FINAL_OPS``) turns the stages' outputs into one
uint8 label map on the CT's grid: ``op(final, outputs, ct) -> Volume``:

- ``argmax``: the labels of ``final.stage`` (already on the CT's grid);
- ``merge`` (3D ResUNet + 2.5D VNet, sections 2-3): kidney from ``kidney_stage``; tumor (the
  tumor stage's labels) written over it, only inside that kidney;
- ``tunet_algorithm1`` (TuNet 3.5, Algorithm 1): thresholds and region growing on the W-Net
  (``whole_stage``) and T-Net (``tumor_stage``) probabilities, multiplied by the L-Net mask
  (``mask_stage``), computed on the W-Net's grid, then pasted back onto the CT's grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kitseg import postprocessing as post
from kitseg.errors import KitsegError
from kitseg.preprocessing.records import CaseRecord
from kitseg.recipes.schema import FinalSpec, Stage
from kitseg.registry import FINAL_OPS, STAGE_OPS
from kitseg.stages.grid import ct_on_entry_grid, labels_on_ct, resample_to_grid, to_entry_grid
from kitseg.stages.outputs import StageOutput
from kitseg.stages.targets import class_labels, classes_to_labels, foreground_labels, foreground_probability
from kitseg.volume import Volume


@dataclass(frozen=True)
class OpContext:
    """What an op may use besides the labels: the entry's probabilities, record and the CT. With
    ``record`` None the op runs on the CT's own grid (``final.postprocess``; no probabilities)."""

    stage: Stage
    probs: np.ndarray | None  # float32 (K, z, y, x) on the entry's grid
    record: CaseRecord | None
    ct: Volume  # the CT in HU on its own grid

    def ct_on_grid(self) -> np.ndarray:
        return self.ct.array if self.record is None else ct_on_entry_grid(self.ct, self.record)

    def affine(self) -> np.ndarray:
        """The (padded) grid's voxel -> LPS mm map."""
        return self.ct.affine if self.record is None else np.asarray(self.record.resample.padded_affine)

    def voxel_ml(self) -> float:
        return abs(float(np.linalg.det(self.affine()[:3, :3]))) / 1000.0


def apply_stage_ops(labels: np.ndarray, context: OpContext, steps=None) -> np.ndarray:
    """Post-processing steps (default: the stage's), in order, on one entry's labels (uint8 out)."""
    for step in context.stage.postprocess if steps is None else steps:
        labels = STAGE_OPS.get(step.op)(labels, context, **dict(step.params))
    return np.ascontiguousarray(labels, dtype=np.uint8)


def apply_final_ops(labels: Volume, final: FinalSpec, outputs: dict[str, StageOutput], ct: Volume) -> Volume:
    """``final.postprocess``: the same ops on the final label map, on the CT's own grid; the default
    foreground labels are those of the stage that gives the final labels."""
    if not final.postprocess:
        return labels
    context = OpContext(outputs[probability_stage(final, outputs)].stage, None, None, ct)
    return labels.with_array(apply_stage_ops(labels.array, context, final.postprocess))


# ---- per-stage ops ---------------------------------------------------------------------------------
def largest_components(labels: np.ndarray, context: OpContext, **params) -> np.ndarray:
    params.setdefault("foreground", foreground_labels(context.stage.target))
    return post.filter_components_multiclass(labels, **params)


def median(labels: np.ndarray, context: OpContext, **params) -> np.ndarray:
    return post.median_filter3(labels, **params)


def tumor_in_kidney(labels: np.ndarray, context: OpContext, **params) -> np.ndarray:
    return post.tumor_inside_kidney(labels, **params)


def kidneys_by_side(labels: np.ndarray, context: OpContext, **params) -> np.ndarray:
    """Needs the CT (the body's midline) and the grid's geometry."""
    params.setdefault("foreground", foreground_labels(context.stage.target))
    return post.kidneys_by_side(labels, context.ct_on_grid(), context.affine(), **params)


def drop_small_tumors(labels: np.ndarray, context: OpContext, **params) -> np.ndarray:
    """Needs the grid's voxel volume; meant for ``final.postprocess`` (the whole case)."""
    return post.drop_small_tumors(labels, context.voxel_ml(), **params)


def class_threshold(labels: np.ndarray, context: OpContext, cls: str = "tumor", min_prob: float = 0.5) -> np.ndarray:
    """Inside the stage's foreground, voxels whose probability of class ``cls`` is at least ``min_prob``
    take that class's label (kitseg's, not a paper's): a decision threshold for one class in place of
    argmax's, so that a class the network is unsure of (a small tumor) is not outvoted by its neighbour
    (the kidney around it). Softmax stages only, as a stage's post-processing (it needs the probabilities)."""
    stage = context.stage
    if stage.target.kind != "softmax" or context.probs is None:
        raise KitsegError(f"stage {stage.name!r}: the class_threshold post-processing needs a softmax stage's "
                          "probabilities (use it in a stage's postprocess, not in final.postprocess)")
    names = list(stage.target.classes)
    if cls not in names:
        raise KitsegError(f"stage {stage.name!r}: class_threshold names class {cls!r}; the stage's classes are "
                          f"{', '.join(names)}")
    i = names.index(cls)
    out = np.array(labels, copy=True)
    out[(out > 0) & (context.probs[1 + i] >= min_prob)] = class_labels(stage.target)[i]  # channel 0: background
    return out


def crf(labels: np.ndarray, context: OpContext, **params) -> np.ndarray:
    """A dense CRF on the softmax probabilities and the CT (3D FCN-PPM II.B); replaces the labels."""
    stage, record = context.stage, context.record
    if stage.target.kind != "softmax":
        raise KitsegError(f"stage {stage.name!r}: the CRF post-processing needs softmax probabilities")
    spacing = np.linalg.norm(np.asarray(record.resample.affine)[:3, :3], axis=0)
    return classes_to_labels(post.dense_crf(context.probs, context.ct_on_grid(), spacing, **params), stage.target)


# ---- final ops -------------------------------------------------------------------------------------
def final_labels(final: FinalSpec, outputs: dict[str, StageOutput], ct: Volume) -> Volume:
    """The recipe's final label map (uint8) on the CT's grid."""
    return FINAL_OPS.get(final.op)(final, outputs, ct)


def final_argmax(final: FinalSpec, outputs: dict[str, StageOutput], ct: Volume) -> Volume:
    return outputs[final.stage or list(outputs)[-1]].labels


def final_merge(final: FinalSpec, outputs: dict[str, StageOutput], ct: Volume) -> Volume:
    if not (final.kidney_stage and final.tumor_stage):
        raise KitsegError("final op 'merge' needs kidney_stage and tumor_stage")
    kidney = outputs[final.kidney_stage].labels.array
    tumor = outputs[final.tumor_stage].labels.array
    out = (kidney > 0).astype(np.uint8)
    inside = (tumor > 0) & (out > 0)
    out[inside] = tumor[inside]
    return ct.with_array(out)


def final_tunet_algorithm1(final: FinalSpec, outputs: dict[str, StageOutput], ct: Volume) -> Volume:
    if not (final.whole_stage and final.tumor_stage):
        raise KitsegError("final op 'tunet_algorithm1' needs whole_stage and tumor_stage (and mask_stage)")
    whole, tumor = outputs[final.whole_stage], outputs[final.tumor_stage]
    pasted = []
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
            mask = to_entry_grid(outputs[final.mask_stage].labels.array > 0, rec) > 0
        pasted.append((rec, post.tunet_algorithm1(p_whole, p_tumor, mask)))
    return labels_on_ct(pasted, ct)


def probability_stage(final: FinalSpec, outputs: dict[str, StageOutput]) -> str:
    """The stage whose probabilities ``--save-probabilities`` writes (the one giving the final labels)."""
    return final.stage or final.tumor_stage or final.whole_stage or list(outputs)[-1]


__all__ = ["OpContext", "apply_final_ops", "apply_stage_ops", "final_labels", "probability_stage"]
