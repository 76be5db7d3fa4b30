"""Training a cascade whose later stage learns from its earlier stage's own predictions.

A stage with ``prior_source: predicted`` (issue 18, choice (c); nnU-Net's cascade) is trained on the
boxes and prior masks that its earlier stage *predicts* for the training cases, not on the ground
truth: the gap between training priors and prediction priors (docs/TRAINING.md) is then closed by
construction. A prediction of a case the model trained on would be too good, so every case is
predicted by the fold model whose validation split holds it (cross-validated, "out-of-fold"). That
needs the earlier stage trained on every fold. ``train_cascade`` (what ``kitseg train`` calls):

1. trains the stages that do not depend on predictions (``train_recipe``);
2. for each stage with ``prior_source: predicted``: trains its earlier stage on every fold (those
   already trained are kept), predicts each case with its held-out fold's model up to that stage
   and writes the labels to ``RUN_DIR/oof/<earlier stage>/<case>.nii.gz`` (resumable: written files
   are kept), then trains the stage on them (``train_recipe(prior_dirs=...)``).

This unit sits above ``kitseg.training`` and ``kitseg.inference``, which never import each other.
A time limit is shared by the training calls in proportion to their (stage, fold, member) jobs and
the stages' ``budget_weight``; the predictions are outside it, like preprocessing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from kitseg.errors import KitsegError
from kitseg.recipes.schema import Recipe
from kitseg.training.loop import StageResult, TrainOptions
from kitseg.training.train_recipe import (
    expected_folds,
    labelled_dataset,
    load_splits,
    oof_dir,
    parse_folds,
    train_recipe,
)

log = logging.getLogger(__name__)


def train_cascade(recipe: Recipe, data_dir: str | Path, run_dir: str | Path, *, folds: str | int | list[int] | None = 0,
                  stages: list[str] | None = None, options: TrainOptions = TrainOptions(), n_splits: int = 5,
                  preprocess_workers: int = 1, ensemble: int | None = None) -> list[StageResult]:
    """``train_recipe``, with cross-validated predictions made for the stages that train on them."""
    kw = dict(n_splits=n_splits, preprocess_workers=preprocess_workers, ensemble=ensemble)
    chosen = [s for s in recipe.stages if not stages or s.name in stages]
    dependent = [s for s in chosen if s.prior_source_stage]
    if not dependent:
        return train_recipe(recipe, data_dir, run_dir, folds=folds, stages=stages, options=options, **kw)
    run_dir = Path(run_dir)
    dataset = labelled_dataset(data_dir)
    n_folds = expected_folds(run_dir, len(dataset.cases), n_splits)
    fold_list = parse_folds(folds, n_folds)
    members = recipe.ensemble if ensemble is None else int(ensemble)
    # the training calls, in order: (stages, folds)
    calls: list[tuple[list[str], list[int]]] = []
    plain = [s.name for s in chosen if not s.prior_source_stage]
    if plain:
        calls.append((plain, fold_list))
    for s in dependent:
        src = s.prior_source_stage
        missing = [k for k in range(n_folds) if not (run_dir / src / f"fold_{k}" / "checkpoint_last.pt").is_file()]
        if src not in plain:
            if missing:
                raise KitsegError(f"stage {s.name!r} trains on stage {src!r}'s cross-validated predictions, and "
                                  f"{src!r} has no model for fold(s) {missing}: train it on every fold first "
                                  f"(kitseg train --stage {src} --folds all)")
        elif [k for k in missing if k not in fold_list]:  # the other folds; those trained before are kept
            calls.append(([src], [k for k in missing if k not in fold_list]))
        calls.append(([s.name], fold_list))
    deadline = None if options.time_limit_s is None else time.monotonic() + options.time_limit_s
    weights = [sum(recipe.stage(n).budget_weight for n in names) * len(which) * members for names, which in calls]
    results: list[StageResult] = []
    for i, (names, which) in enumerate(calls):
        share = None if deadline is None else max(0.0, deadline - time.monotonic()) * weights[i] / sum(weights[i:])
        prior_dirs = {n: predict_out_of_fold(recipe, data_dir, run_dir, recipe.stage(n).prior_source_stage, options)
                      for n in names if recipe.stage(n).prior_source_stage}
        results += train_recipe(recipe, data_dir, run_dir, folds=which, stages=names,
                                options=dataclasses.replace(options, time_limit_s=share), prior_dirs=prior_dirs or None,
                                **kw)
    return results


def predict_out_of_fold(recipe: Recipe, data_dir: str | Path, run_dir: str | Path, stage_name: str,
                        options: TrainOptions = TrainOptions()) -> Path:
    """Labels of ``stage_name`` for every case of the dataset, each predicted by the models (every
    member) of the fold whose validation split holds the case: ``oof_dir(run_dir, stage_name)``.
    Cases already written are kept; rank 0 predicts, the others wait."""
    import torch

    from kitseg.inference.cascade import run_stages
    from kitseg.io import read_volume, write_volume
    from kitseg.precision import resolve_precision
    from kitseg.preprocessing.fingerprint import read_fingerprint
    from kitseg.stages.checkpoint import load_stage_models
    from kitseg.stages.loaded_run import LoadedRun
    from kitseg.training.distributed import barrier

    run_dir = Path(run_dir)
    out = oof_dir(run_dir, stage_name)
    dataset = labelled_dataset(data_dir)
    if options.dist.is_main:
        if not (run_dir / "splits.json").is_file():
            raise KitsegError(f"no splits.json: train stage {stage_name!r} first", run_dir)
        splits = load_splits(run_dir / "splits.json")
        upto = [s for s in recipe.stages[: [s.name for s in recipe.stages].index(stage_name) + 1]]
        head = recipe.model_copy(update={"stages": upto})  # the cascade up to that stage
        fp_path = run_dir / "fingerprint.json"
        fingerprint = read_fingerprint(fp_path) if fp_path.is_file() else None
        device = torch.device(options.device)
        prec = resolve_precision(options.precision, device)
        cases = {c.case_id: c for c in dataset.cases}
        out.mkdir(parents=True, exist_ok=True)
        for k, split in enumerate(splits.folds):
            todo = [cid for cid in split.val if cid in cases and not (out / f"{cid}.nii.gz").is_file()]
            if not todo:
                continue
            models = {s.name: load_stage_models(run_dir, s.name, [k], "best" if _has_best(run_dir, s.name, k)
                                                else "last", device) for s in upto}
            run = LoadedRun(head, dataset.spec, fingerprint, models, device, run_dir)
            for cid in todo:
                ct = read_volume(cases[cid].image)
                with torch.inference_mode():
                    outputs = run_stages(ct, [run], device, case_id=cid, prec=prec, until=stage_name)
                labels = outputs[stage_name].labels
                write_volume(labels, out / f"{cid}.nii.gz", dtype="uint8")
                log.info("%s: stage %s predicted by fold %d for training the next stage", cid, stage_name, k)
        missing = [cid for cid in cases if not (out / f"{cid}.nii.gz").is_file()]
        if missing:
            raise KitsegError(f"no cross-validated prediction of {len(missing)} case(s) (e.g. {missing[0]}): the "
                              f"splits do not cover them", out)
    barrier(options.dist)
    return out


def _has_best(run_dir: Path, stage: str, fold: int) -> bool:
    return (run_dir / stage / f"fold_{fold}" / "checkpoint_best.pt").is_file()


__all__ = ["predict_out_of_fold", "train_cascade"]
