"""One cascade runner for every recipe: ``predict_case(image, run) -> Volume`` (uint8, the input's grid).

For each stage of ``recipe.stages``, in order (``_run_stage``):

1. preprocess the CT exactly as training did (``kitseg.preprocessing.cache.preprocess_case``):
   crop around the earlier stage's kidneys when the stage has ``roi_from`` (one box per kidney
   with ``roi.kidneys: each``, Zhang et al. 2.1/2.3; the earlier stage kept its two largest
   components, 2.4), resample to the stage's grid, denoise, normalize with the run's fingerprint;
2. add the input channels named in ``stage.inputs`` (``mask:<s>``, ``prob:<s>``,
   ``masked_ct:<s>``: stage s's output moved onto this grid, ``kitseg.training.inputs``);
3. run the stage's inference scheme (Gaussian sliding window, z-windows, majority vote, 2.5D
   slices, whole volume) with the ensemble of its fold models (and of several runs), optionally
   with mirroring TTA;
4. turn probabilities into dataset labels (``kitseg.training.targets.classes_to_labels``) and
   apply the stage's post-processing steps on its own grid, per box;
5. paste each box's labels onto the original grid (uint8; only the box around the labels is
   resampled), which is what later stages crop around.

Then ``recipe.final`` combines the stages (``kitseg.inference.final``). No full-resolution float
array of the whole volume is built (``return_probabilities`` excepted: float16).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from kitseg.errors import KitsegError
from kitseg.inference import variants
from kitseg.inference.ensemble import EnsemblePredictor
from kitseg.inference.final import (
    final_labels,
    foreground_probability,
    probabilities_on_grid,
    probability_stage,
)
from kitseg.inference.mapping import paste_labels, resample_to_grid, to_entry_grid, unpadded
from kitseg.inference.run import LoadedRun
from kitseg.inference.sliding import sliding_window
from kitseg.io import VolumeLike, read_volume
from kitseg.precision import Precision, resolve_precision
from kitseg.preprocessing.cache import preprocess_case
from kitseg.preprocessing.records import CaseRecord
from kitseg.recipes.schema import Stage
from kitseg.training.inputs import assemble_inputs, prior_stages
from kitseg.training.targets import classes_to_labels, foreground_labels
from kitseg.volume import Volume

log = logging.getLogger(__name__)
# ``inference.mode: whole`` predicts a volume in one pass up to this many voxels (a KiTS19 CT at 4 mm
# has at most 1.8e6); larger ones use windows of the stage's patch so that memory stays bounded.
WHOLE_MAX_VOXELS = 4_000_000


@dataclass
class EntryOutput:
    """One box (or the whole volume) of a stage: its record, probabilities and labels on its grid."""

    record: CaseRecord
    probs: np.ndarray  # float32 (K, z, y, x) on the entry's (padded) grid
    labels: np.ndarray  # uint8 dataset labels on the same grid, post-processed


@dataclass
class StageOutput:
    stage: Stage
    entries: list[EntryOutput]
    labels: np.ndarray  # uint8 dataset labels on the original grid
    seconds: float = 0.0


@dataclass
class Probabilities:
    """Class probabilities of the stage that gives the final labels, on the input's grid (float16)."""

    array: np.ndarray  # (K, z, y, x) in the canonical (z, y, x) order of the returned Volume
    classes: list[str]
    stage: str


@dataclass
class CaseTimings:
    """Seconds spent per stage (and in total) for one case, filled by ``predict_case``."""

    stages: dict[str, float] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)
    total: float = 0.0


def predict_case(image: VolumeLike, run: LoadedRun | Sequence[LoadedRun], device: str | torch.device | None = None,
                 tta: bool = False, return_probabilities: bool = False, timings: CaseTimings | None = None,
                 case_id: str = "case", precision: str | Precision | None = None
                 ) -> Volume | tuple[Volume, Probabilities]:
    """Segment one CT with a trained run (or an ensemble of runs of one recipe).

    ``image``: a path, DICOM folder, Volume or SimpleITK image. Returns uint8 labels (KiTS19:
    0/1/2; KiTS21/23: 0..3) as a Volume with exactly the input's grid (``write_volume`` restores
    the file's orientation), plus ``Probabilities`` when ``return_probabilities``. ``precision``:
    ``auto | fp32 | bf16 | fp16`` (``kitseg.precision``; default auto).
    """
    t0 = time.perf_counter()
    runs = [run] if isinstance(run, LoadedRun) else list(run)
    if not runs:
        raise KitsegError("predict_case needs a trained run")
    _check_compatible(runs)
    recipe = runs[0].recipe
    dev = torch.device(device) if device is not None else runs[0].device
    for r in runs:
        if r.device != dev:
            for models in r.models.values():
                for m in models:
                    m.to(dev)
    prec = resolve_precision(precision, dev)
    ct = read_volume(image)
    outputs: dict[str, StageOutput] = {}
    for stage in recipe.stages:
        ts = time.perf_counter()
        outputs[stage.name] = _run_stage(stage.name, ct, runs, outputs, dev, tta, case_id, timings, prec)
        outputs[stage.name].seconds = time.perf_counter() - ts
        if timings is not None:
            timings.stages[stage.name] = outputs[stage.name].seconds
        log.info("%s: stage %s took %.1f s", case_id, stage.name, outputs[stage.name].seconds)
    labels = final_ops(final_labels(recipe.final, outputs, ct.shape, ct.affine), recipe.final.postprocess, ct)
    result = ct.with_array(np.ascontiguousarray(labels, dtype=np.uint8))
    if timings is not None:
        timings.total = time.perf_counter() - t0
    if not return_probabilities:
        return result
    name = probability_stage(recipe.final, outputs)
    target = outputs[name].stage.target
    classes = (["background"] if target.kind == "softmax" else []) + list(target.classes)
    return result, Probabilities(probabilities_on_grid(outputs[name], ct.shape, ct.affine), classes, name)


def _check_compatible(runs: list[LoadedRun]) -> None:
    """Runs ensembled together must share the stages' names, targets, inputs and ROI sources.

    Their networks, preprocessing and training may differ (TuNet 3.6 averages four model variants);
    the first run decides the post-processing and the final step (e.g. TuNet's Algorithm 1 over the
    average of variants trained without it).
    """
    first = runs[0].recipe
    for r in runs[1:]:
        same = ([(s.name, s.target, s.inputs, s.roi_from) for s in r.recipe.stages]
                == [(s.name, s.target, s.inputs, s.roi_from) for s in first.stages])
        if not same:
            raise KitsegError(f"cannot ensemble recipe {r.recipe.name!r} with {first.name!r}: their stages' names, "
                              "targets, inputs or ROI sources differ", r.run_dir)


def ensemble_note(runs: Sequence[LoadedRun]) -> str | None:
    """A note when fewer models per stage are averaged than the recipe's ``ensemble`` (the paper's count)."""
    runs = list(runs)
    wanted = runs[0].recipe.ensemble
    have = min(sum(len(r.models[s.name]) for r in runs) for s in runs[0].recipe.stages)
    if have >= wanted:
        return None
    return (f"recipe {runs[0].recipe.name!r} averages {wanted} models per stage; this prediction averages {have} "
            f"(give more run folders with --model, or train more folds)")


def _run_stage(name: str, ct: Volume, runs: list[LoadedRun], outputs: dict[str, StageOutput],
               device: torch.device, tta: bool, case_id: str, timings: CaseTimings | None,
               precision: Precision | None = None) -> StageOutput:
    stage = runs[0].recipe.stage(name)
    roi_from = None
    if stage.roi_from:
        roi_from = outputs[stage.roi_from].labels
        if not roi_from.any():
            log.warning("%s: stage %s found no kidney; stage %s runs on the whole volume", case_id, stage.roi_from,
                        name)
    # Each run preprocesses with its own spec and fingerprint; their entries must share one grid.
    per_run = [preprocess_case(ct, None, r.recipe.stage(name).preprocess, r.fingerprint, case_id=case_id,
                               roi_from=roi_from) for r in runs]
    entries = []
    labels_full = np.zeros(ct.shape, dtype=np.uint8)
    for i, entry in enumerate(per_run[0]):
        probs, weight = None, 0
        for r, run_entries in zip(runs, per_run):
            if len(run_entries) != len(per_run[0]) or run_entries[i].record.shape != entry.record.shape or \
                    not np.allclose(run_entries[i].record.resample.affine, entry.record.resample.affine, atol=1e-4):
                raise KitsegError(f"stage {name!r}: the ensembled runs preprocess to different grids", r.run_dir)
            rstage = r.recipe.stage(name)
            x = assemble_inputs(run_entries[i].image[0], _priors(rstage, entry.record, outputs), rstage)
            models = r.models[name]
            p = infer(torch.from_numpy(x), rstage, models, device, tta, timings, precision)
            probs = p * len(models) if probs is None else probs + p * len(models)
            weight += len(models)
        probs /= weight
        labels = _labels(probs, stage, ct, entry.record)
        paste_labels(unpadded(labels, entry.record), entry.record.resample.affine, labels_full, ct.affine)
        entries.append(EntryOutput(entry.record, probs, labels))
    return StageOutput(stage, entries, labels_full)


def _priors(stage: Stage, record: CaseRecord, outputs: dict[str, StageOutput]) -> dict[str, np.ndarray]:
    """Earlier stages' outputs on this entry's grid: masks (nearest) or probabilities (linear)."""
    out = {}
    for s in prior_stages(stage):
        if f"prob:{s}" in stage.inputs:
            p = np.zeros(record.shape, np.float32)
            for e in outputs[s].entries:
                fg = foreground_probability(unpadded(e.probs, e.record), outputs[s].stage.target.kind)
                np.maximum(p, resample_to_grid(fg, e.record.resample.affine, record.shape,
                                               record.resample.padded_affine), out=p)
            out[s] = p
        else:
            out[s] = (to_entry_grid(outputs[s].labels > 0, record) > 0).astype(np.float32)
    return out


def flips_for(stage: Stage, dims: int) -> list[tuple[int, ...]]:
    """Mirroring TTA flips: the training flip axes (all axes when training flipped none), nnU-Net style."""
    axes = stage.augmentation.flip_axes or [0, 1, 2]
    if dims == 2:  # a 2D network sees (y, x): volume axes 1, 2 become 0, 1
        axes = [a - 1 for a in axes if a > 0]
    return variants.mirror_flips(axes)


def infer(x: torch.Tensor, stage: Stage, models, device: torch.device, tta: bool = False,
          timings: CaseTimings | None = None, precision: Precision | None = None) -> np.ndarray:
    """The stage's inference scheme on one input (C, z, y, x) -> probabilities (K, z, y, x) float32."""
    from kitseg.nets import required_divisor

    net = models[0]
    dims = int(getattr(net, "dims", 3))
    divisor = required_divisor(net) if hasattr(net, "size_divisor") else (1,) * dims
    tta = tta or stage.inference.tta
    predictor = EnsemblePredictor(models, stage.target.kind, flips_for(stage, dims) if tta else [()],
                                  precision=precision)
    spec, patch = stage.inference, stage.patch_size
    counter = _Counter()
    kw = dict(device=device, divisor=divisor, progress=counter)
    if dims == 2:
        in_plane = list(patch[-2:]) if patch and spec.mode == "sliding_window" else None
        out = variants.slices25d(x, predictor, int(getattr(net, "context_slices", 1)), in_plane=in_plane,
                                 overlap=spec.overlap, batch_size=max(1, spec.batch_size), **kw)
    elif (spec.mode == "whole" or patch is None) and (patch is None or x[0].numel() <= WHOLE_MAX_VOXELS):
        out = variants.whole(x, predictor, min_size=patch, **kw)
    elif spec.mode == "whole":  # too large for one pass (a whole-body scan): Gaussian windows of the patch
        out = sliding_window(x, predictor, patch, spec.overlap, sw_batch_size=spec.batch_size, **kw)
    elif spec.mode == "sliding_window":
        out = sliding_window(x, predictor, patch, spec.overlap, weights="gaussian" if spec.gaussian else "constant",
                             sw_batch_size=spec.batch_size, **kw)
    elif spec.mode == "z_windows":
        window = spec.window or patch[0]
        out = variants.z_windows(x, predictor, window, spec.stride or window // 2,
                                 spec.keep or (window // 4, window - window // 4), patch[1:], **kw)
    elif spec.mode == "majority_vote":
        out = variants.majority_vote(x, predictor, spec.window or patch[0], spec.stride, patch[1:], **kw)
    else:
        raise KitsegError(f"stage {stage.name!r}: inference mode {spec.mode!r} needs a 2D (2.5D) network")
    if timings is not None:
        timings.windows[stage.name] = timings.windows.get(stage.name, 0) + counter.total
    return np.ascontiguousarray(out.float().numpy())


class _Counter:
    def __init__(self):
        self.total = 0

    def __call__(self, done: int, total: int) -> None:
        self.total = total


def _labels(probs: np.ndarray, stage: Stage, ct: Volume, record: CaseRecord) -> np.ndarray:
    """Dataset labels of one entry from its probabilities, then the stage's post-processing steps."""
    from kitseg.postprocessing import OPS, dense_crf, drop_small_tumors, kidneys_by_side

    target = stage.target
    classes = probs.argmax(0) if target.kind == "softmax" else probs > 0.5
    labels = classes_to_labels(classes, target)
    for step in stage.postprocess:
        params = dict(step.params)
        if step.op == "crf":
            if target.kind != "softmax":
                raise KitsegError(f"stage {stage.name!r}: the CRF post-processing needs softmax probabilities")
            hu = _raw_ct(ct, record)
            spacing = np.linalg.norm(np.asarray(record.resample.affine)[:3, :3], axis=0)
            labels = classes_to_labels(dense_crf(probs, hu, spacing, **params), target)
        elif step.op == "drop_small_tumors":
            voxel_ml = abs(float(np.linalg.det(np.asarray(record.resample.affine)[:3, :3]))) / 1000.0
            labels = drop_small_tumors(labels, voxel_ml, **params)
        elif step.op == "kidneys_by_side":  # needs the CT (the body's midline) and the grid's geometry
            params.setdefault("foreground", foreground_labels(target))
            labels = kidneys_by_side(labels, _raw_ct(ct, record), record.resample.padded_affine, **params)
        elif step.op == "largest_components":
            params.setdefault("foreground", foreground_labels(target))
            labels = OPS[step.op](labels, **params)
        else:
            labels = OPS[step.op](labels, **params)
    return np.ascontiguousarray(labels, dtype=np.uint8)


def final_ops(labels: np.ndarray, steps, ct: Volume) -> np.ndarray:
    """``final.postprocess``: steps on the final label map, on the CT's own grid."""
    from kitseg.postprocessing import OPS, drop_small_tumors, kidneys_by_side

    for step in steps:
        params = dict(step.params)
        if step.op == "drop_small_tumors":
            labels = drop_small_tumors(labels, ct.voxel_volume_ml, **params)
        elif step.op == "kidneys_by_side":
            labels = kidneys_by_side(labels, ct.array, ct.affine, **params)
        elif step.op in OPS:
            labels = OPS[step.op](labels, **params)
        else:
            raise KitsegError(f"final post-processing: op {step.op!r} does not run on a label map alone")
    return labels


def _raw_ct(ct: Volume, record: CaseRecord) -> np.ndarray:
    """The CT in HU on an entry's grid (the CRF's appearance term)."""
    from kitseg.preprocessing.resample import resample_array

    arr = ct.array[record.crop.slices] if record.crop is not None else ct.array
    res = record.resample
    arr = resample_array(arr, res.shape, "linear") if tuple(arr.shape) != tuple(res.shape) else arr.astype(np.float32)
    return np.pad(arr, res.pad, mode="edge") if any(a or b for a, b in res.pad) else arr


__all__ = ["CaseTimings", "EntryOutput", "Probabilities", "StageOutput", "ensemble_note", "flips_for", "infer",
           "predict_case"]
