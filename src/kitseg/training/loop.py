"""The training loop: one short function for every recipe and every stage of a cascade.

``train_stage`` trains one stage on one fold: sample -> augment -> network -> loss -> step, then
validation Dice on fixed validation patches, the schedule, the smoothed Dice that picks the best
checkpoint (exponential moving average 0.9, as nnU-Net), early stopping, logs and an atomic
checkpoint every epoch. Everything it needs to continue after a SIGKILL is in that checkpoint;
``resume=True`` continues from it and ends with the same weights as a run that was never stopped
(on the CPU, bit for bit).

On CUDA it uses automatic mixed precision (bfloat16 where supported, else float16 with a
GradScaler) and the channels_last(_3d) memory format; on the CPU both are off.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kitseg._atomic import remove_partials
from kitseg.errors import KitsegError
from kitseg.losses import Loss, build_loss
from kitseg.precision import Precision, as_float, resolve_precision
from kitseg.recipes.schema import Stage, TargetSpec
from kitseg.stages.checkpoint import (
    BEST,
    FORMAT,
    LAST,
    VERSION,
    load_checkpoint,
    network_record,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from kitseg.training import logs
from kitseg.training.data import Batch, TrainBatches, validation_batches
from kitseg.training.distributed import (
    SINGLE,
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    broadcast_object,
    check_replicas,
    device_for,
)
from kitseg.training.optim import (
    EarlyStopping,
    build_optimizer,
    build_scheduler,
    poly_by_progress,
    step_schedule,
)
from kitseg.training.sampling import Sampler, TrainCase, stage_geometry

EMA = 0.9  # smoothing of the validation Dice that picks the best checkpoint (nnU-Net)


@dataclass(frozen=True)
class TrainOptions:
    """Run settings that are not part of the recipe. ``until_epoch`` stops after that many epochs
    without finishing the run (continue later with ``resume``: e.g. a cluster's time limit).
    ``time_limit_s`` stops ``train_stage`` after the epoch in which that many seconds (wall clock,
    counted from the call's start) have passed, leaving the stage unfinished and resumable; every
    call trains at least one epoch. ``train_recipe`` reads it as the budget of all its training
    and gives each (stage, fold) an equal share of what is left when it starts."""

    seed: int = 0
    device: str = "cpu"
    epochs: int | None = None
    until_epoch: int | None = None
    resume: bool = False
    progress: bool = True
    workers: int = 0
    val_per_case: int = 2
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (kitseg.precision)
    amp: bool = True  # False: the old --no-amp, an alias of precision fp32
    time_limit_s: float | None = None
    dist: DistInfo = SINGLE


@dataclass
class StageResult:
    stage: str
    fold: int
    out_dir: Path
    epochs_done: int
    finished: bool
    best_epoch: int
    best_ema_dice: float
    history: list[dict] = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False)  # the trained network (last epoch)
    time_limited: bool = False  # stopped by TrainOptions.time_limit_s (unfinished, resumable)
    seconds: float = 0.0  # wall-clock time of this train_stage call
    member: int = 0  # ensemble member (kitseg train --ensemble)

    @property
    def data_model_ratio(self) -> float:
        """Seconds spent waiting for batches per second of forward/backward/step, over the run."""
        data = sum(r["data_s"] for r in self.history)
        model = sum(r["model_s"] for r in self.history)
        return data / model if model > 0 else float("nan")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # only for libraries that use the global generator; ours take Generators
    torch.manual_seed(seed)


def validate(model: nn.Module, batches: list[Batch], loss_fn: Loss, target: TargetSpec, device: torch.device,
             precision: Precision, dist: DistInfo) -> tuple[float, list[float]]:
    """Validation loss and Dice per class, pooled over all validation patches (and ranks)."""
    model.eval()
    k = len(target.classes)
    counts = torch.zeros(3 * k + 2, dtype=torch.float64, device=device)  # tp, fp, fn per class, loss sum, n
    with torch.no_grad():
        for x, y, _ in batches:
            x, y = x.to(device), y.to(device)
            with precision.autocast():
                out = as_float(model(x))
            out = out[0] if isinstance(out, (list, tuple)) else out
            counts[3 * k] += loss_fn(out, y).double() * len(x)
            counts[3 * k + 1] += len(x)
            for c in range(k):
                if target.kind == "softmax":
                    p, t = out.argmax(1) == c + 1, y == c + 1
                else:
                    p, t = out[:, c] > 0, y[:, c] > 0.5
                counts[c] += (p & t).sum()
                counts[k + c] += (p & ~t).sum()
                counts[2 * k + c] += (~p & t).sum()
    counts = all_reduce_sum(counts, dist).cpu()
    tp, fp, fn = counts[:k], counts[k : 2 * k], counts[2 * k : 3 * k]
    denom = 2 * tp + fp + fn
    dice = [float(2 * tp[c] / denom[c]) if denom[c] > 0 else float("nan") for c in range(k)]
    return float(counts[3 * k] / max(1.0, float(counts[3 * k + 1]))), dice


def _hardness(out, y: torch.Tensor, loss_fn: Loss, softmax: bool) -> tuple[list[float], list[float]]:
    """Per-sample loss and false-positive voxel fraction of a training batch (hard-case sampling)."""
    o = (out[0] if isinstance(out, (list, tuple)) else out).detach().float()
    with torch.no_grad():
        losses = [float(loss_fn.single(o[i : i + 1], y[i : i + 1])) for i in range(len(o))]
        pred_fg = (o.argmax(1) > 0) if softmax else (o > 0)
        fp = (pred_fg & (y == 0)).flatten(1).float().mean(1)
    return losses, fp.tolist()


def stage_precision(options: TrainOptions, device: torch.device) -> Precision:
    """The precision a training runs in (``amp=False``, the old ``--no-amp``, means fp32)."""
    return resolve_precision("fp32" if not options.amp else options.precision, device)


class Engine:
    """The trained things of one stage and their one-epoch step: network, optimizer, schedule,
    AMP scaler, early stopping and sampler, with the state a checkpoint needs to resume."""

    def __init__(self, stage: Stage, sampler_cases: list[TrainCase], epochs: int, options: TrainOptions,
                 net_record: dict | None = None):
        from kitseg.nets import build_network
        from kitseg.training.joint import JOINT, build_joint

        self.stage, self.options, self.dist = stage, options, options.dist
        self.device = device_for(options.device, self.dist)
        seed_everything(options.seed)
        self.net = net_record or network_record(stage)
        if self.net["name"] == JOINT:  # two cascaded stages trained as one (Stage.train_with)
            self.model = build_joint(self.net).to(self.device)
        else:
            self.model = build_network(self.net["name"], self.net["in_channels"], self.net["out_channels"],
                                       **self.net["params"]).to(self.device)
        self.memory_format = torch.channels_last_3d if self.model.dims == 3 else torch.channels_last
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=self.memory_format)
        self.geometry = stage_geometry(stage, self.model.dims, self.model.size_divisor,
                                       getattr(self.model, "context_slices", 1))
        self.precision = stage_precision(options, self.device)
        self.optimizer = build_optimizer(stage.optimizer, self.model.parameters())
        self.scheduler = build_scheduler(stage.schedule, self.optimizer, epochs)
        self.stopper = EarlyStopping(stage.schedule.early_stopping)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.uses_scaler)
        self.loss_fn = build_loss(stage.loss, stage.target)
        self.sampler = Sampler(sampler_cases, stage.sampler, self.geometry, stage.augmentation, seed=options.seed,
                               classes=list(stage.target.classes))
        self.train_model: nn.Module = self.model

    def autocast(self):
        return self.precision.autocast()

    def wrap_ddp(self) -> None:
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def train_epoch(self, batches: TrainBatches, epoch: int, advance=None) -> tuple[float, float, float]:
        """One epoch of steps; returns (mean loss, seconds waiting for data, seconds in the model)."""
        stage, device = self.stage, self.device
        self.model.train()
        t_data = t_model = 0.0
        losses = []
        batch_iter = batches.epoch()
        for _ in range(stage.iterations_per_epoch):
            t0 = time.perf_counter()
            x, y, case_idx = next(batch_iter)
            t1 = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=self.memory_format)
            with self.autocast():
                out = self.train_model(x)
            out = as_float(out)  # the loss (and hard-case scores) in fp32
            loss = self.loss_fn(out, y, epoch)
            if not torch.isfinite(loss) and not self.scaler.is_enabled():
                hint = (" or train in fp32 (--precision fp32: bf16 gradients can turn non-finite on a CPU without "
                        "AMX)" if self.precision.name == "bf16" and device.type == "cpu" else "")
                raise KitsegError(f"stage {stage.name!r}: the loss became {float(loss)} in epoch {epoch + 1}; "
                                  f"lower the learning rate (--set stages.{stage.name}.optimizer.lr=...){hint}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            losses.append(float(loss.detach()))
            if stage.sampler.hard_case:
                per_loss, per_fp = _hardness(out, y, self.loss_fn, stage.target.kind == "softmax")
                for ci, ls, fp in all_gather_objects((case_idx, per_loss, per_fp), self.dist):
                    self.sampler.update_hardness(ci, ls, fp)
            t_model += time.perf_counter() - t1
            t_data += t1 - t0
            if advance is not None:
                advance()
        return float(np.mean(losses)), t_data, t_model

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "early_stopping": self.stopper.state_dict(),
                "sampler": self.sampler.state_dict(), "rng": rng_state()}

    def load_state_dict(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scheduler is not None and ck.get("scheduler") is not None:
            self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.stopper.load_state_dict(ck["early_stopping"])
        self.sampler.load_state_dict(ck["sampler"])
        set_rng_state(ck["rng"])


def train_stage(stage: Stage, train_cases: list[TrainCase], val_cases: list[TrainCase], out_dir: str | Path,
                targets: dict[str, TargetSpec], *, fold: int = 0, options: TrainOptions = TrainOptions(),
                net_record: dict | None = None) -> StageResult:
    """Train ``stage`` on ``train_cases``, validating on ``val_cases`` (the training cases when
    empty); write checkpoints and logs into ``out_dir``. ``net_record``: the network to train
    instead of the stage's own (a ``kitseg.training.joint`` pair).

    ``targets`` maps every stage name of the recipe to its TargetSpec (for ``mask:<stage>`` inputs).
    On the CPU, torch's deterministic algorithms are switched on for the call (and restored after).
    """
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if not options.device.startswith("cuda"):
            torch.use_deterministic_algorithms(True, warn_only=True)
        return _train_stage(stage, train_cases, val_cases, Path(out_dir), targets, fold, options, net_record)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _train_stage(stage: Stage, train_cases: list[TrainCase], val_cases: list[TrainCase], out_dir: Path,
                 targets: dict[str, TargetSpec], fold: int, options: TrainOptions,
                 net_record: dict | None = None) -> StageResult:
    started = time.perf_counter()
    dist = options.dist
    epochs = options.epochs or stage.epochs
    last_path = out_dir / LAST
    if dist.is_main:
        remove_partials(out_dir)  # left by a kill mid-write
    if last_path.exists() and not options.resume:
        raise KitsegError(f"{last_path} exists: pass --resume to continue that run, or choose a new output folder")
    eng = Engine(stage, train_cases, epochs, options, net_record)
    val_sampler = Sampler(val_cases or train_cases, stage.sampler, eng.geometry, stage.augmentation,
                          seed=options.seed + 1, classes=list(stage.target.classes))
    val_data = validation_batches(val_sampler, stage, targets, options.val_per_case, dist)

    start, history, ema, best_ema, best_epoch, finished = 0, [], None, -math.inf, 0, False
    if options.resume and last_path.exists():
        ck = load_checkpoint(last_path, "cpu")
        if ck["network"] != eng.net or ck["stage"] != stage.name or ck["fold"] != fold:
            raise KitsegError("this checkpoint was made with another network, stage or fold than the recipe now "
                              "asks for; resume with the same recipe or use a new output folder", last_path)
        eng.load_state_dict(ck)
        start, history, ema = int(ck["epoch"]), list(ck["history"]), ck["ema_dice"]
        best_ema, best_epoch, finished = float(ck["best_ema_dice"]), int(ck["best_epoch"]), bool(ck["finished"])
    end = epochs if options.until_epoch is None else min(epochs, options.until_epoch)
    if finished or start >= end:
        if dist.is_main and _logs_behind(out_dir / "log.csv", history):  # killed between checkpoint and logs
            _write_logs(out_dir, history, stage.name, fold)
        return StageResult(stage.name, fold, out_dir, start, finished, best_epoch, best_ema, history, eng.model.eval(),
                           seconds=time.perf_counter() - started)

    eng.wrap_ddp()
    batches = TrainBatches(eng.sampler, stage, targets, stage.iterations_per_epoch, options.workers, dist,
                           pin_memory=eng.device.type == "cuda")
    writer = logs.TensorBoard(out_dir / "tensorboard", purge_step=start + 1) if dist.is_main else None
    bar = _progress(options.progress and dist.is_main)
    task = bar.add_task("", total=(end - start) * stage.iterations_per_epoch) if bar else None
    if bar:
        bar.console.print(f"{stage.name} fold {fold}: {eng.precision.describe()}")
    names = list(stage.target.classes)
    time_limited = False
    try:
        for epoch in range(start, end):
            if bar:
                bar.update(task, description=f"{stage.name} fold {fold} epoch {epoch + 1}/{epochs}")
            train_loss, t_data, t_model = eng.train_epoch(batches, epoch, (lambda: bar.advance(task)) if bar else None)
            t_val = time.perf_counter()
            val_loss, dice = validate(eng.model, val_data, eng.loss_fn, stage.target, eng.device, eng.precision, dist)
            mean_dice = float(np.nanmean(dice)) if not all(math.isnan(d) for d in dice) else 0.0
            ema = mean_dice if ema is None else EMA * ema + (1 - EMA) * mean_dice
            if options.time_limit_s and stage.schedule.name == "poly":  # the schedule follows the budget too
                used = (time.perf_counter() - started) / options.time_limit_s
                poly_by_progress(eng.optimizer, max((epoch + 1) / epochs, used), stage.schedule.power)
            else:
                step_schedule(eng.scheduler, val_loss)
            stop = eng.stopper.step(val_loss)
            row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                   **{f"dice_{n}": d for n, d in zip(names, dice)}, "val_dice": mean_dice, "ema_dice": ema,
                   "lr": eng.optimizer.param_groups[0]["lr"], "data_s": t_data, "model_s": t_model,
                   "val_s": time.perf_counter() - t_val, "precision": eng.precision.name}
            history.append(row)
            finished = stop or epoch + 1 >= epochs
            improved = ema > best_ema
            if improved:
                best_ema, best_epoch = ema, epoch + 1
            if dist.is_main:
                ck = {"format": FORMAT, "version": VERSION, "network": eng.net, "stage": stage.name,
                      "precision": eng.precision.name,
                      "stage_spec": stage.model_dump_json(), "fold": fold, "epoch": epoch + 1, "epochs": epochs,
                      "model": eng.model.state_dict(), "ema_dice": ema, "val_dice": mean_dice,
                      "best_ema_dice": best_ema, "best_epoch": best_epoch, "finished": finished}
                if improved:
                    save_checkpoint(out_dir / BEST, ck)
                save_checkpoint(last_path, {**ck, **eng.state_dict(), "history": history})
                _write_logs(out_dir, history, stage.name, fold)  # after the checkpoint, which is what resume trusts
                writer.log(row)
                if bar:
                    bar.console.print(_summary(row, names, improved))
            if stop:
                break
            if not finished and epoch + 1 < end and options.time_limit_s is not None:
                # rank 0's clock decides, so that every rank stops after the same epoch
                time_limited = broadcast_object(time.perf_counter() - started >= options.time_limit_s, dist)
                if time_limited:
                    break
    finally:
        if bar:
            bar.stop()
        if writer:
            writer.close()
    check_replicas(eng.model, dist)
    return StageResult(stage.name, fold, out_dir, history[-1]["epoch"] if history else start, finished, best_epoch,
                       best_ema, history, eng.model.eval(), time_limited, time.perf_counter() - started)


def _write_logs(out_dir: Path, history: list[dict], stage_name: str, fold: int) -> None:
    """curves.png, then log.csv: a log.csv with every epoch of the checkpoint means both are current."""
    logs.write_curves(out_dir / "curves.png", history, f"{stage_name}, fold {fold}")
    logs.write_csv(out_dir / "log.csv", history)


def _logs_behind(path: Path, history: list[dict]) -> bool:
    if not history:
        return False
    try:
        return path.read_text(encoding="utf-8").count("\n") != len(history) + 1
    except OSError:
        return True


def _summary(row: dict, names: list[str], improved: bool) -> str:
    dice = " ".join(f"{n} {row[f'dice_{n}']:.3f}" for n in names)
    return (f"epoch {row['epoch']}: loss {row['train_loss']:.4f} / val {row['val_loss']:.4f}, Dice {dice}, "
            f"smoothed {row['ema_dice']:.3f}{' (best)' if improved else ''}; data {row['data_s']:.1f} s, "
            f"model {row['model_s']:.1f} s")


def _progress(enabled: bool):
    if not enabled:
        return None
    from kitseg.progress import make_progress

    bar = make_progress()
    bar.start()
    return bar
