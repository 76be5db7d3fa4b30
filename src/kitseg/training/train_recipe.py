"""Train a whole recipe: every stage of the cascade, on one fold, some folds or all of them.

``train_recipe`` opens the dataset, writes the run folder's description (``recipe.json``,
``dataset.json``, ``fingerprint.json``, ``splits.json``), preprocesses each stage's cases into
``RUN_DIR/cache/<stage>`` (``kitseg.preprocessing``; stages with a ROI are cropped around the
ground truth), and trains each stage on each fold with ``train_stage``. In training every stage
gets its priors (``mask:<stage>`` inputs, ROI crops) from the ground truth, so the stages are
independent and ``--stage`` trains one alone. Layout (CONTRACTS)::

    RUN_DIR/recipe.json dataset.json fingerprint.json splits.json cache/<stage>/
    RUN_DIR/<stage>/fold_<k>/checkpoint_last.pt checkpoint_best.pt log.csv curves.png tensorboard/
    RUN_DIR/<stage>/fold_<k>/member_<m>/...      (ensemble members 1.., ``--ensemble N``)
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from kitseg._atomic import remove_partials, write_json
from kitseg.datasets import Dataset, open_dataset
from kitseg.errors import KitsegError
from kitseg.recipes.schema import Recipe, Stage
from kitseg.stages.checkpoint import fold_dir
from kitseg.stages.targets import foreground_labels
from kitseg.training.distributed import barrier, broadcast_object
from kitseg.training.loop import StageResult, TrainOptions, train_stage
from kitseg.training.sampling import TrainCase, make_train_case
from kitseg.training.splits import Splits, ensure_splits, load_splits
from kitseg.training_data import describe_folder
from kitseg.training_data import write as write_training_data


def labelled_dataset(data_dir: str | Path) -> Dataset:
    """The dataset's cases that have both an image and a label (the ones training can use)."""
    ds = open_dataset(data_dir)
    cases = tuple(c for c in ds.cases if c.image is not None and c.label is not None)
    if len(cases) < 2:
        raise KitsegError(f"training needs at least 2 cases with an image and a label; found {len(cases)} "
                          f"(of {len(ds.cases)} cases)", ds.root)
    return Dataset(ds.root, ds.spec, cases)


def check_labels(recipe: Recipe, dataset: Dataset) -> None:
    """Every label a stage learns must exist in the dataset (a KiTS23 recipe on KiTS19 data fails here)."""
    known = dataset.spec.label_values
    for s in recipe.stages:
        missing = sorted(set(foreground_labels(s.target)) - known)
        if missing:
            raise KitsegError(f"stage {s.name!r} learns labels {missing}, which the dataset does not have "
                              f"(its labels: {dataset.spec.labels})", dataset.root)


def stage_seed(seed: int, fold: int, stage_index: int, member: int = 0) -> int:
    """A distinct, reproducible seed per (run seed, fold, stage, ensemble member)."""
    key = [seed, fold, stage_index] + ([member] if member else [])  # member 0: the seed runs always had
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def prepare_run(recipe: Recipe, dataset: Dataset, run_dir: Path, options: TrainOptions, n_splits: int = 5,
                workers: int = 1, stages: list[str] | None = None, prior_dirs: dict[str, Path] | None = None
                ) -> Splits:
    """Write the run's description files and the caches of ``stages`` (default all; rank 0); return the splits.

    A stage with ``prior_source: predicted`` is cached only when ``prior_dirs`` holds its earlier stage's
    cross-validated predictions (``oof_dir``): its boxes are cropped around them."""
    from kitseg.preprocessing.cache import preprocess_dataset
    from kitseg.preprocessing.fingerprint import fingerprint_for

    dist = options.dist
    error = None
    if dist.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            remove_partials(run_dir)  # left by a kill mid-write
            recipe_json = recipe.model_dump(mode="json")
            if (run_dir / "recipe.json").exists():
                if json.loads((run_dir / "recipe.json").read_text(encoding="utf-8")) != recipe_json:
                    raise KitsegError("this run folder was trained with another recipe (or other overrides); "
                                      "use a new output folder", run_dir / "recipe.json")
            else:
                write_json(run_dir / "recipe.json", recipe_json)
            write_json(run_dir / "dataset.json", dataset.spec.model_dump(mode="json"))
            fingerprint = fingerprint_for(dataset, run_dir / "fingerprint.json", [s.preprocess for s in recipe.stages],
                                          workers=workers, progress=options.progress, seed=options.seed)
            ensure_splits(run_dir / "splits.json", [c.case_id for c in dataset.cases], n_splits, options.seed)
            write_training_data(run_dir, describe_folder(dataset.root, dataset.spec.name, len(dataset.cases),
                                                         len(load_splits(run_dir / "splits.json").folds)))
            for s in recipe.stages:
                if stages and s.name not in stages:
                    continue
                roi_dir = None
                if s.prior_source_stage:
                    roi_dir = (prior_dirs or {}).get(s.name)
                    if roi_dir is None:
                        continue  # cached once the earlier stage's cross-validated predictions exist
                preprocess_dataset(dataset, run_dir / "cache" / s.name, s.preprocess, fingerprint, workers=workers,
                                   progress=options.progress, roi_dir=roi_dir)
        except KitsegError as exc:
            error = str(exc)
    error = broadcast_object(error, dist)  # every rank fails together rather than waiting forever
    if error is not None:
        raise KitsegError(error)
    barrier(dist)
    return load_splits(run_dir / "splits.json")


def oof_dir(run_dir: str | Path, stage_name: str) -> Path:
    """Where a stage's cross-validated (out-of-fold) predictions of the training cases are kept: each case
    predicted by the fold model that did not train on it (labels on the case's grid, ``<case>.nii.gz``)."""
    return Path(run_dir) / "oof" / stage_name


def load_train_cases(cache_dir: Path, case_ids: list[str], stage: Stage, seed: int,
                     prior_dir: Path | None = None) -> list[TrainCase]:
    """The cached entries (one per case, or one per kidney) of ``case_ids``, indexed for sampling.

    ``prior_dir``: the earlier stage's cross-validated predictions (``prior_source: predicted``): each
    entry's prior is that prediction moved onto the entry's grid, as prediction moves it."""
    from kitseg.preprocessing.cache import load_case, read_index, read_roi
    from kitseg.stages.grid import to_entry_grid

    index = read_index(cache_dir)
    out = []
    for i, cid in enumerate(case_ids):
        if cid not in index.cases:
            raise KitsegError(f"case {cid} is missing from the cache; run kitseg train --resume to finish it",
                              cache_dir)
        predicted = None if prior_dir is None else read_roi(prior_dir, cid, None) > 0
        for entry in index.cases[cid]:
            cached = load_case(cache_dir, entry)
            if cached.label is None:
                raise KitsegError(f"cached entry {entry} has no label", cache_dir)
            prior = None if predicted is None else to_entry_grid(predicted, cached.record)
            out.append(make_train_case(entry, cached.image[0], cached.label, cached.record.spacing, stage.target,
                                       seed + i, prior))
    return out


def parse_folds(folds: str | int | list[int] | None, n_folds: int) -> list[int]:
    """``0`` / ``"0,2"`` / ``"all"`` -> fold indices, checked against the splits."""
    if folds is None:
        return [0]
    if isinstance(folds, str):
        if folds == "all":
            return list(range(n_folds))
        try:
            folds = [int(f) for f in folds.split(",") if f.strip()]
        except ValueError:
            raise KitsegError(f"--fold must be a fold number, a comma-separated list or 'all', got {folds!r}") \
                from None
    if isinstance(folds, int):
        folds = [folds]
    bad = [f for f in folds if not 0 <= f < n_folds]
    if bad:
        raise KitsegError(f"fold {bad[0]} does not exist: the splits have folds 0..{n_folds - 1}")
    return list(folds)


def train_recipe(recipe: Recipe, data_dir: str | Path, run_dir: str | Path, *, folds: str | int | list[int] | None = 0,
                 stages: list[str] | None = None, options: TrainOptions = TrainOptions(), n_splits: int = 5,
                 preprocess_workers: int = 1, ensemble: int | None = None, prior_dirs: dict[str, Path] | None = None
                 ) -> list[StageResult]:
    """Prepare the run folder and train the chosen stages on the chosen folds (see the module docstring).

    ``ensemble`` (default ``recipe.ensemble``): networks trained per (stage, fold), each with its own seed
    (weights, sampling, augmentation); member 0 in ``<stage>/fold_<k>``, member m in
    ``<stage>/fold_<k>/member_<m>``. Prediction averages every member of every fold.

    ``prior_dirs``: stage name -> the folder of its earlier stage's cross-validated predictions, for the
    stages with ``prior_source: predicted`` (``kitseg.cascade_training.train_cascade`` makes them; training
    such a stage without them is refused).

    ``options.time_limit_s`` is the budget of the training of all chosen stages and folds, counted
    from the end of the preprocessing: each (stage, fold), in order, gets ``time_share`` of what is
    left and stops after the epoch in which its share ran out (unfinished; continue with ``resume``).
    """
    run_dir = Path(run_dir)
    dataset = labelled_dataset(data_dir)
    check_labels(recipe, dataset)
    names = [s.name for s in recipe.stages]
    for name in stages or []:
        if name not in names:
            raise KitsegError(f"recipe {recipe.name!r} has no stage {name!r}; its stages: {', '.join(names)}")
    parse_folds(folds, expected_folds(run_dir, len(dataset.cases), n_splits))  # before hours of preprocessing
    for s in recipe.stages:
        if s.prior_source_stage and (not stages or s.name in stages) and s.name not in (prior_dirs or {}):
            raise KitsegError(f"stage {s.name!r} trains on stage {s.prior_source_stage!r}'s cross-validated "
                              f"predictions (prior_source: predicted); train it with kitseg train, which makes them "
                              f"(kitseg.cascade_training.train_cascade)")
    splits = prepare_run(recipe, dataset, run_dir, options, n_splits, preprocess_workers, stages, prior_dirs)
    fold_list = parse_folds(folds, len(splits.folds))
    targets = {s.name: s.target for s in recipe.stages}
    joint_firsts = {s.train_with: s.name for s in recipe.stages if s.train_with}
    for name in stages or []:
        if name in joint_firsts:
            raise KitsegError(f"stage {name!r} is trained jointly with stage {joint_firsts[name]!r} (train_with); "
                              f"train {joint_firsts[name]!r}")
    members = recipe.ensemble if ensemble is None else int(ensemble)
    if members < 1:
        raise KitsegError(f"--ensemble must be at least 1, got {members}")
    jobs = [(si, stage, fold, m) for si, stage in enumerate(recipe.stages) if not stages or stage.name in stages
            if stage.name not in joint_firsts for fold in fold_list for m in range(members)]
    deadline = None if options.time_limit_s is None else time.monotonic() + options.time_limit_s
    results = []
    for k, (si, stage, fold, member) in enumerate(jobs):
        cache_dir = run_dir / "cache" / stage.name
        split = splits.folds[fold]
        seed = stage_seed(options.seed, fold, si, member)
        out_dir, net_record, pair = fold_dir(run_dir, stage.name, fold, member), None, None
        if stage.train_with:  # two stages as one network (kitseg.training.joint: TuNet's end-to-end W-Net + T-Net)
            from kitseg.training.joint import joint_pair, joint_record, joint_stage

            pair = joint_pair(recipe, stage)
            stage, net_record, out_dir = joint_stage(*pair), joint_record(*pair), out_dir / "joint"
        prior_dir = (prior_dirs or {}).get(stage.name) if stage.prior_source_stage else None
        train = load_train_cases(cache_dir, split.train, stage, seed, prior_dir)
        val = load_train_cases(cache_dir, split.val, stage, seed + 10_000, prior_dir)
        weights = [s.budget_weight for _, s, _, _ in jobs[k:]]
        share = None if deadline is None else time_share(deadline - time.monotonic(), len(jobs) - k,
                                                           weights[0] / sum(weights) * len(weights))
        if options.resume and options.dist.is_main:  # where it continues, even without progress bars
            _say(resume_note(out_dir, stage.name, fold, options.epochs or stage.epochs, member))
        fold_options = dataclasses.replace(options, seed=seed, time_limit_s=share)
        joint = {"net_record": net_record} if net_record is not None else {}
        results.append(dataclasses.replace(
            train_stage(stage, train, val, out_dir, targets, fold=fold, options=fold_options, **joint), member=member))
        if pair is not None and options.dist.is_main:
            from kitseg.training.joint import export_split

            export_split(out_dir, run_dir, *pair, fold, member)
        barrier(options.dist)
    return results


def expected_folds(run_dir: Path, n_cases: int, n_splits: int) -> int:
    """How many folds the run will have: its splits.json's, else what ``make_splits`` will make."""
    path = Path(run_dir) / "splits.json"
    return len(load_splits(path).folds) if path.is_file() else min(n_splits, n_cases)


def resume_note(out_dir: Path, stage_name: str, fold: int, epochs: int, member: int = 0) -> str:
    """One line saying where ``--resume`` continues a (stage, fold): from its last checkpoint's epoch."""
    import torch

    from kitseg.stages.checkpoint import LAST

    head = f"{stage_name} fold {fold}" + (f" member {member}" if member else "") + ": "
    path = out_dir / LAST
    if not path.is_file():
        return head + f"no checkpoint yet, starting at epoch 1 of {epochs}"
    try:  # mmap: only the few numbers are read, not the weights
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        done, finished = int(ck["epoch"]), bool(ck.get("finished", False))
    except Exception as exc:  # the loop reports an unreadable checkpoint properly
        return head + f"cannot read {path.name} ({type(exc).__name__})"
    if finished:
        return head + f"already finished ({done} of {epochs} epochs{', stopped early' if done < epochs else ''})"
    if done >= epochs:
        return head + f"already at epoch {done} of {epochs}"
    return head + f"resuming after epoch {done} of {epochs}"


def _say(line: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(line)


def time_share(remaining_s: float, jobs_left: int, weight: float = 1.0) -> float:
    """The seconds of a training budget that the next of ``jobs_left`` (stage, fold) jobs gets: an
    equal share of what is left (a job that finishes early leaves its rest to the later ones), times
    ``weight`` (its stage's ``budget_weight`` relative to the mean weight of the jobs left)."""
    return max(0.0, remaining_s) / max(1, jobs_left) * weight

