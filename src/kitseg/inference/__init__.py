"""Inference: sliding windows, the papers' variants, ensembles, the cascade runner, files and folders.

The Python API (a path, DICOM folder, ``Volume`` or SimpleITK image in, a ``Volume`` out)::

    from kitseg.inference import predict
    labels = predict("case_00123/imaging.nii.gz", "runs/kitseg_cascade")   # uint8 Volume, input grid
    from kitseg.io import write_volume
    write_volume(labels, "case_00123.nii.gz")                             # the input's geometry

Modules: ``sliding`` (Gaussian sliding window), ``variants`` (z-windows, majority vote, 2.5D
slices, whole volume, mirroring TTA), ``modes`` (the registered inference modes), ``ensemble``
(probability averaging), ``cascade`` (``predict_case``), ``folder`` (``predict_folder``: resume,
skip, torchrun sharding). The stage contract they use (inputs, targets, grids, ops, the run
folder) is ``kitseg.stages``.
See docs/INFERENCE.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from kitseg.inference.cascade import CaseTimings, Probabilities, predict_case
from kitseg.inference.folder import FolderSummary, predict_file, predict_folder
from kitseg.inference.sliding import sliding_window
from kitseg.io import VolumeLike
from kitseg.stages.loaded_run import LoadedRun
from kitseg.stages.run_folder import load_run
from kitseg.volume import Volume


def predict(image: VolumeLike, model: str | Path | LoadedRun | Sequence[str | Path | LoadedRun],
            device: str | torch.device = "cpu", *, tta: bool = False, folds: list[int] | None = None,
            precision: str = "auto") -> Volume:
    """Segment one CT: uint8 labels (0 background, 1 kidney, 2 tumor; KiTS23 3 cyst) on its exact grid.

    ``model``: a run folder written by ``kitseg train``, a ``LoadedRun``, or several of either (an
    ensemble of runs of one recipe, e.g. TuNet's four variants). ``folds``: which folds to
    average (default: every trained fold). ``precision``: ``auto | fp32 | bf16 | fp16``
    (``kitseg.precision``: auto is bf16 on CPUs with AMX and on bf16 GPUs).
    """
    models = [model] if isinstance(model, (str, Path, LoadedRun)) else list(model)
    runs = [m if isinstance(m, LoadedRun) else load_run(m, device, folds) for m in models]
    result = predict_case(image, runs, device, precision=precision)
    assert isinstance(result, Volume)
    return result


__all__ = ["CaseTimings", "FolderSummary", "LoadedRun", "Probabilities", "load_run", "predict", "predict_case",
           "predict_file", "predict_folder", "sliding_window"]
