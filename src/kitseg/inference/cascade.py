"""One cascade runner for every recipe: ``predict_case(image, run) -> Volume`` (uint8, the input's grid).

``predict_case`` reads the CT, then for each stage of ``recipe.stages``, in order:

1. preprocess the CT exactly as training did (``kitseg.preprocessing.pipeline.preprocess_case``):
   crop around the earlier stage's kidneys when the stage has ``roi_from`` (one box per kidney
   with ``roi.kidneys: each``, Zhang et al. 2.1/2.3; the earlier stage kept its two largest
   components, 2.4), resample to the stage's grid, denoise, normalize with the run's fingerprint;
2. add the input channels of ``stage.inputs`` (earlier stages' outputs moved onto this grid,
   ``kitseg.stages.inputs``);
3. run the stage's inference mode (``kitseg.inference.modes``: Gaussian sliding window, z-windows,
   majority vote, 2.5D slices, whole volume) with the ensemble of its fold models (and of several
   runs), optionally with mirroring TTA;
4. turn probabilities into dataset labels and apply the stage's ops on its own grid, per box
   (``kitseg.stages.ops``);
5. paste each box's labels back onto the CT's grid (``kitseg.stages.grid``), which is what later
   stages crop around.

Then ``recipe.final`` combines the stages (``kitseg.stages.ops``). No full-resolution float
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
from kitseg.inference.modes import mode_of
from kitseg.io import VolumeLike, read_volume
from kitseg.precision import Precision, resolve_precision
from kitseg.preprocessing.pipeline import Preprocessed, preprocess_case
from kitseg.preprocessing.records import CaseRecord
from kitseg.recipes.schema import Stage
from kitseg.registry import INFERENCE_MODES
from kitseg.stages.grid import labels_on_ct, probabilities_on_ct, resample_to_grid, to_entry_grid, unpadded
from kitseg.stages.inputs import assemble_inputs, pad_values
from kitseg.stages.loaded_run import LoadedRun
from kitseg.stages.ops import OpContext, apply_final_ops, apply_stage_ops, final_labels, probability_stage
from kitseg.stages.outputs import EntryOutput, StageOutput
from kitseg.stages.targets import foreground_probability, labels_from_probabilities
from kitseg.volume import Volume

log = logging.getLogger(__name__)


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
    runs, dev = _runs_on(run, device)
    prec = resolve_precision(precision, dev)
    recipe = runs[0].recipe
    ct = read_volume(image)
    outputs = run_stages(ct, runs, dev, tta, timings, case_id, prec)
    result = apply_final_ops(final_labels(recipe.final, outputs, ct), recipe.final, outputs, ct)
    if timings is not None:
        timings.total = time.perf_counter() - t0
    if not return_probabilities:
        return result
    return result, _probabilities(recipe.final, outputs, ct)


def run_stages(ct: Volume, runs: list[LoadedRun], dev: torch.device, tta: bool = False,
               timings: CaseTimings | None = None, case_id: str = "case", prec: Precision | None = None,
               until: str | None = None) -> dict[str, StageOutput]:
    """Every stage of the (first) run's recipe on ``ct``, in order, or those up to ``until``: each stage's
    output with its labels on the CT's grid (what ``kitseg.cascade_training`` writes as a stage's
    cross-validated predictions)."""
    outputs: dict[str, StageOutput] = {}
    for stage in runs[0].recipe.stages:
        ts = time.perf_counter()
        per_run = [preprocess_case(ct, None, r.recipe.stage(stage.name).preprocess, r.fingerprint, case_id=case_id,
                                   roi_from=_roi(stage, outputs, case_id)) for r in runs]
        entries = []
        for i, entry in enumerate(_same_grids(stage, runs, per_run)):
            probs = _ensemble([(r, run_entries[i]) for r, run_entries in zip(runs, per_run)], stage.name, outputs,
                              dev, tta, timings, prec)
            labels = apply_stage_ops(labels_from_probabilities(probs, stage.target),
                                     OpContext(stage, probs, entry.record, ct))
            entries.append(EntryOutput(entry.record, probs, labels))
        outputs[stage.name] = StageOutput(stage, entries, labels_on_ct([(e.record, e.labels) for e in entries], ct),
                                          time.perf_counter() - ts)
        _log_stage(outputs[stage.name], case_id, timings)
        if stage.name == until:
            break
    return outputs


def _runs_on(run: LoadedRun | Sequence[LoadedRun], device) -> tuple[list[LoadedRun], torch.device]:
    """The runs to ensemble (checked compatible), their models moved to ``device``."""
    runs = [run] if isinstance(run, LoadedRun) else list(run)
    if not runs:
        raise KitsegError("predict_case needs a trained run")
    _check_compatible(runs)
    dev = torch.device(device) if device is not None else runs[0].device
    for r in runs:
        if r.device != dev:
            for models in r.models.values():
                for m in models:
                    m.to(dev)
    return runs, dev


def _roi(stage: Stage, outputs: dict[str, StageOutput], case_id: str) -> np.ndarray | None:
    """The earlier stage's labels that this stage crops around (None: no ROI)."""
    if not stage.roi_from:
        return None
    roi_from = outputs[stage.roi_from].labels.array
    if not roi_from.any():
        log.warning("%s: stage %s found no kidney; stage %s runs on the whole volume", case_id, stage.roi_from,
                    stage.name)
    return roi_from


def _same_grids(stage: Stage, runs: list[LoadedRun], per_run: list[list[Preprocessed]]) -> list[Preprocessed]:
    """Each run preprocesses with its own spec and fingerprint; their entries must share one grid."""
    first = per_run[0]
    for r, run_entries in zip(runs, per_run):
        if len(run_entries) != len(first) or any(
                e.record.shape != f.record.shape
                or not np.allclose(e.record.resample.affine, f.record.resample.affine, atol=1e-4)
                for e, f in zip(run_entries, first)):
            raise KitsegError(f"stage {stage.name!r}: the ensembled runs preprocess to different grids", r.run_dir)
    return first


def _ensemble(pairs: list[tuple[LoadedRun, Preprocessed]], name: str, outputs: dict[str, StageOutput],
              device: torch.device, tta: bool, timings: CaseTimings | None, precision: Precision | None
              ) -> np.ndarray:
    """The stage's probabilities on one entry: every run's inputs and models, averaged per model."""
    probs, weight = None, 0
    for r, entry in pairs:
        rstage = r.recipe.stage(name)
        x = assemble_inputs(entry.image[0], _priors(rstage, entry.record, outputs), rstage)
        models = r.models[name]
        p = infer(torch.from_numpy(x), rstage, models, device, tta, timings, precision)
        probs = p * len(models) if probs is None else probs + p * len(models)
        weight += len(models)
    return probs / weight


def _priors(stage: Stage, record: CaseRecord, outputs: dict[str, StageOutput]) -> dict[str, np.ndarray]:
    """Earlier stages' outputs on this entry's grid: masks (nearest) or probabilities (linear)."""
    out = {}
    prob_of = {i.stage for i in stage.typed_inputs if i.kind == "prob"}
    for s in stage.prior_stages:
        if s in prob_of:
            p = np.zeros(record.shape, np.float32)
            for e in outputs[s].entries:
                fg = foreground_probability(unpadded(e.probs, e.record), outputs[s].stage.target.kind)
                np.maximum(p, resample_to_grid(fg, e.record.resample.affine, record.shape,
                                               record.resample.padded_affine), out=p)
            out[s] = p
        else:
            out[s] = (to_entry_grid(outputs[s].labels.array > 0, record) > 0).astype(np.float32)
    return out


def _log_stage(output: StageOutput, case_id: str, timings: CaseTimings | None) -> None:
    if timings is not None:
        timings.stages[output.stage.name] = output.seconds
    log.info("%s: stage %s took %.1f s", case_id, output.stage.name, output.seconds)


def _probabilities(final, outputs: dict[str, StageOutput], ct: Volume) -> Probabilities:
    name = probability_stage(final, outputs)
    output = outputs[name]
    target = output.stage.target
    classes = (["background"] if target.kind == "softmax" else []) + list(target.classes)
    array = probabilities_on_ct([(e.record, e.probs) for e in output.entries], target.kind == "softmax", ct)
    return Probabilities(array, classes, name)


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
            f"(train with --ensemble {wanted}, train more folds, or give more run folders with --model)")


def flips_for(stage: Stage, dims: int) -> list[tuple[int, ...]]:
    """Mirroring TTA flips: the training flip axes (all axes when training flipped none), nnU-Net style."""
    axes = stage.augmentation.flip_axes or [0, 1, 2]
    if dims == 2:  # a 2D network sees (y, x): volume axes 1, 2 become 0, 1
        axes = [a - 1 for a in axes if a > 0]
    return variants.mirror_flips(axes)


def infer(x: torch.Tensor, stage: Stage, models, device: torch.device, tta: bool = False,
          timings: CaseTimings | None = None, precision: Precision | None = None) -> np.ndarray:
    """The stage's inference mode on one input (C, z, y, x) -> probabilities (K, z, y, x) float32."""
    from kitseg.nets import required_divisor

    net = models[0]
    dims = int(getattr(net, "dims", 3))
    divisor = required_divisor(net) if hasattr(net, "size_divisor") else (1,) * dims
    tta = tta or stage.inference.tta
    predictor = EnsemblePredictor(models, stage.target.kind, flips_for(stage, dims) if tta else [()],
                                  precision=precision)
    counter = _Counter()
    out = INFERENCE_MODES.get(mode_of(stage, dims))(x, stage, predictor, net, device=device, divisor=divisor,
                                                    pad_value=pad_values(x.numpy(), stage), progress=counter)
    if timings is not None:
        timings.windows[stage.name] = timings.windows.get(stage.name, 0) + counter.total
    return np.ascontiguousarray(out.float().numpy())


class _Counter:
    def __init__(self):
        self.total = 0

    def __call__(self, done: int, total: int) -> None:
        self.total = total


__all__ = ["CaseTimings", "Probabilities", "ensemble_note", "flips_for", "infer", "predict_case", "run_stages"]
