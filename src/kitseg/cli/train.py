"""`kitseg train --recipe NAME --data DIR -o RUN_DIR`: train a recipe's stages on k-fold splits."""

from __future__ import annotations

from pathlib import Path

import click

from kitseg.errors import KitsegError


@click.command()
@click.option("--recipe", default="kitseg_cascade", show_default=True,
              help="Recipe name or YAML file (see `kitseg recipes`).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True,
              help="Training data: KiTS layout (case_XXXXX/imaging + segmentation) or nnU-Net layout.")
@click.option("-o", "--output", "run_dir", type=click.Path(path_type=Path), required=True, help="Run folder.")
@click.option("--fold", "--folds", "folds", default="0", show_default=True,
              help="Fold to train: a number, a list (0,2) or 'all'.")
@click.option("--stage", "stages", multiple=True, help="Train only this stage (repeatable). Default: all stages.")
@click.option("--variant", help="A variant (ablation) of the recipe.")
@click.option("--epochs", type=click.IntRange(1), help="Override every stage's number of epochs.")
@click.option("--profile", type=click.Choice(["paper", "tiny", "cpu"]), default="paper", show_default=True,
              help="paper: the recipe as published; cpu: scaled so that 30 min on 2 CPU cores gives the method's "
              "best model (docs/METHODS.md); tiny: tiny networks and few epochs, a check of the whole path.")
@click.option("--tiny", is_flag=True, help="Same as --profile tiny.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set stages.segment.optimizer.lr=1e-4 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoints.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the splits, sampling and weights.")
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True,
              help="Data-loading worker processes (0: in the main process) and preprocessing processes.")
@click.option("--n-splits", type=click.IntRange(2), default=5, show_default=True, help="Cross-validation folds.")
@click.option("--until-epoch", type=click.IntRange(1), help="Stop after this epoch (continue later with --resume).")
@click.option("--time-limit", "time_limit", type=click.FloatRange(0, min_open=True), metavar="MINUTES",
              help="Training budget of this call (after preprocessing), shared equally by the stages and folds "
              "still to train: each stops after the epoch in which its share ran out (continue with --resume).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="Autocast precision of the networks: auto = bf16 on a CPU with AMX and on GPUs "
              "that support it, fp16 on other GPUs, fp32 on other CPUs. Checkpoints are fp32 either way.")
@click.option("--no-amp", is_flag=True, help="Same as --precision fp32.")
@click.option("--ensemble", type=click.IntRange(1), metavar="N",
              help="Train N networks per stage and fold, each with its own seed; kitseg predict averages them all. "
              "Default: the recipe's `ensemble` (1 unless the recipe or variant says otherwise).")
@click.option("--no-progress", is_flag=True, help="No progress bar or per-epoch lines.")
def train(recipe: str, data_dir: Path, run_dir: Path, folds: str, stages: tuple[str, ...], variant: str | None,
          epochs: int | None, profile: str, tiny: bool, sets: tuple[str, ...], resume: bool, device: str, seed: int,
          workers: int, n_splits: int, until_epoch: int | None, time_limit: float | None, precision: str,
          no_amp: bool, ensemble: int | None, no_progress: bool) -> None:
    """Train every stage of a recipe (or --stage) on one fold or all (--folds all).

    Writes RUN_DIR/recipe.json, dataset.json, fingerprint.json, splits.json, cache/<stage>/ and
    RUN_DIR/<stage>/fold_<k>/ with checkpoint_last.pt (every epoch), checkpoint_best.pt, log.csv,
    curves.png and tensorboard/ (--ensemble N: members 1.. in fold_<k>/member_<m>/). Several GPUs or
    nodes: launch with torchrun, e.g. `torchrun --nproc_per_node 4 -m kitseg.cli.main train ...` (see docs/TRAINING.md).
    """
    import torch

    from kitseg.cascade_training import train_cascade
    from kitseg.precision import resolve_precision
    from kitseg.recipes import load_recipe
    from kitseg.training.distributed import cleanup, init_distributed
    from kitseg.training.loop import TrainOptions

    overrides = list(sets)
    if tiny and profile not in ("paper", "tiny"):
        raise KitsegError(f"--tiny and --profile {profile} contradict each other; give one")
    rec = load_recipe(recipe, overrides, variant=variant, profile="tiny" if tiny else profile)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if no_amp:
        if precision not in ("auto", "fp32"):
            raise KitsegError(f"--no-amp (fp32) and --precision {precision} contradict each other; give one")
        precision = "fp32"
    chosen = resolve_precision(precision, device)
    dist = init_distributed(device)
    if dist.is_main:
        click.echo(f"training {rec.name}" + (f" ({rec.profile} profile)" if rec.profile else "") + f": "
                   f"{chosen.describe()}")
    try:
        options = TrainOptions(seed=seed, device=device, epochs=epochs, until_epoch=until_epoch, resume=resume,
                               progress=not no_progress and dist.is_main, workers=workers, precision=chosen.name,
                               time_limit_s=None if time_limit is None else time_limit * 60.0, dist=dist)
        results = train_cascade(rec, data_dir, run_dir, folds=folds, stages=list(stages) or None, options=options,
                               n_splits=n_splits, preprocess_workers=max(1, workers), ensemble=ensemble)
    finally:
        cleanup(dist)
    if dist.is_main:
        for r in results:
            state = "finished" if r.finished else f"stopped after epoch {r.epochs_done}" + (
                " (time limit; continue with --resume)" if r.time_limited else "")
            member = f" member {r.member}" if r.member else ""
            click.echo(f"{r.stage} fold {r.fold}{member}: {state}; best smoothed Dice {r.best_ema_dice:.3f} (epoch "
                       f"{r.best_epoch}); data/model time {r.data_model_ratio:.2f}; {r.out_dir}")
