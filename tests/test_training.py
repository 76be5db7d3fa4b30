"""Training engine: targets, inputs, splits, schedules, checkpoints, the loop (sampling: test_sampling.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kitseg.errors import KitsegError
from kitseg.recipes import load_recipe
from kitseg.recipes.schema import AugmentSpec, OptimizerSpec, SamplerSpec, ScheduleSpec, TargetSpec
from kitseg.stages.checkpoint import load_checkpoint, load_stage_models, rng_state, save_checkpoint, set_rng_state
from kitseg.stages.inputs import assemble_inputs, background_value, priors_from_label
from kitseg.stages.targets import class_labels, classes_to_labels, make_target
from kitseg.training.loop import TrainOptions, train_stage
from kitseg.training.optim import EarlyStopping, build_optimizer, build_scheduler, step_schedule
from kitseg.training.sampling import Geometry, Sampler, make_train_case
from kitseg.training.splits import ensure_splits, make_splits
from synthetic_kits import make_case, make_kits_dataset, write_tiny_recipe

KITS = TargetSpec(kind="softmax", classes={"kidney": [1], "tumor": [2]})
LOCALIZE = TargetSpec(kind="softmax", classes={"kidney": [1, 2]})
TUNET = TargetSpec(kind="sigmoid", classes={"whole": [1, 2], "tumor": [2]})
KITS23 = TargetSpec(kind="sigmoid", classes={"kidney_and_masses": [1, 2, 3], "masses": [2, 3], "tumor": [2]})


# ---- targets and inputs ------------------------------------------------------------------------
def test_make_target_and_back():
    lab = np.array([[[0, 1, 2, 3]]], np.uint8)
    assert make_target(lab, KITS).tolist() == [[[0, 1, 2, 0]]]
    assert make_target(lab, LOCALIZE).tolist() == [[[0, 1, 1, 0]]]
    sig = make_target(lab, TUNET)
    assert sig.shape == (2, 1, 1, 4) and sig[:, 0, 0].tolist() == [[0, 1, 1, 0], [0, 0, 1, 0]]
    kits19 = np.array([[[0, 1, 2, 1]]], np.uint8)
    assert np.array_equal(classes_to_labels(make_target(kits19, KITS), KITS), kits19)
    assert classes_to_labels(make_target(kits19, LOCALIZE), LOCALIZE).tolist() == [[[0, 1, 1, 1]]]
    assert np.array_equal(classes_to_labels(make_target(kits19, TUNET), TUNET), kits19)
    # KiTS23 hierarchical regions come back as kidney 1, cyst 3, tumor 2
    k23 = np.array([[[0, 1, 2, 3]]], np.uint8)
    assert class_labels(KITS23) == [1, 3, 2]
    assert np.array_equal(classes_to_labels(make_target(k23, KITS23), KITS23), k23)
    with pytest.raises(KitsegError, match="both contain label 2"):
        make_target(lab, TargetSpec(kind="softmax", classes={"whole": [1, 2], "tumor": [2]}))


def test_assemble_inputs_channels():
    recipe = _tiny_recipe_obj()
    stage = recipe.stage("segment").model_copy(update={"inputs": ["ct", "mask:localize", "prob:localize",
                                                                  "masked_ct:localize"]})
    ct = np.arange(8, dtype=np.float32).reshape(2, 2, 2) - 3
    lab = np.zeros((2, 2, 2), np.uint8)
    lab[0, 0, 0], lab[1, 1, 1] = 1, 2
    x = assemble_inputs(ct, priors_from_label(lab, stage, {"localize": LOCALIZE}), stage)
    fg = (lab > 0).astype(np.float32)
    assert x.shape == (4, 2, 2, 2)
    assert np.array_equal(x[0], ct) and np.array_equal(x[1], fg) and np.array_equal(x[2], fg)
    assert np.array_equal(x[3], np.where(fg > 0, ct, background_value(ct))) and background_value(ct) == -3
    with pytest.raises(KitsegError, match="needs the output of stage"):
        assemble_inputs(ct, {}, stage)


# ---- splits ------------------------------------------------------------------------------------
def test_splits_deterministic_disjoint_and_stored(tmp_path):
    ids = [f"case_{i:05d}" for i in range(12)]
    a, b = make_splits(ids, 5, seed=3), make_splits(list(reversed(ids)), 5, seed=3)
    assert a == b and len(a.folds) == 5
    vals = [c for f in a.folds for c in f.val]
    assert sorted(vals) == ids  # every case validated exactly once
    for f in a.folds:
        assert not set(f.train) & set(f.val) and sorted(f.train + f.val) == ids
    assert make_splits(ids, 5, seed=4) != a
    path = tmp_path / "splits.json"
    assert ensure_splits(path, ids, 5, 3) == a
    assert json.loads(path.read_text(encoding="utf-8"))["folds"][0]["val"] == a.folds[0].val
    assert ensure_splits(path, ids, 5, 99) == a  # stored splits win
    with pytest.raises(KitsegError, match="do not match"):
        ensure_splits(path, ids[:-1], 5, 3)
    assert len(make_splits(ids[:3], 5).folds) == 3  # fewer cases than folds: leave-one-out


# ---- optimizers and schedules ------------------------------------------------------------------
def _lrs(spec: ScheduleSpec, opt_spec: OptimizerSpec, epochs: int, losses=None):
    opt = build_optimizer(opt_spec, [torch.nn.Parameter(torch.zeros(1))])
    sched = build_scheduler(spec, opt, epochs)
    out = []
    for e in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        step_schedule(sched, 1.0 if losses is None else losses[e])
    return opt, out


def test_schedules_from_the_papers():
    # 3D FCN-PPM: SGD momentum 0.9, weight decay 1e-5, lr 1e-3, multistep at epochs 3, 5, 7
    opt, lrs = _lrs(ScheduleSpec(name="multistep", milestones=[3, 5, 7]),
                    OptimizerSpec(name="sgd", lr=1e-3, momentum=0.9, weight_decay=1e-5), 9)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["weight_decay"] == 1e-5
    assert lrs == pytest.approx([1e-3] * 3 + [1e-4] * 2 + [1e-5] * 2 + [1e-6] * 2)
    # nnU-Net-like poly
    _, lrs = _lrs(ScheduleSpec(name="poly", power=0.9), OptimizerSpec(name="sgd", lr=1e-2, momentum=0.99,
                                                                      nesterov=True), 10)
    assert lrs == pytest.approx([1e-2 * (1 - e / 10) ** 0.9 for e in range(10)])
    # TuNet: Adam 1e-4, plateau x0.2 after 6 epochs without improvement
    opt, lrs = _lrs(ScheduleSpec(name="plateau", factor=0.2, patience=6), OptimizerSpec(lr=1e-4, weight_decay=1e-5),
                    10)
    assert isinstance(opt, torch.optim.Adam) and lrs[:8] == pytest.approx([1e-4] * 8) and lrs[8] == pytest.approx(2e-5)
    stopper = EarlyStopping(15)
    assert not stopper.step(1.0)
    assert [stopper.step(1.0) for _ in range(15)] == [False] * 14 + [True]


# ---- checkpoints -------------------------------------------------------------------------------
def test_checkpoint_roundtrip_rng_and_errors(tmp_path):
    torch.manual_seed(3)
    state = rng_state()
    expected = torch.rand(3)
    save_checkpoint(tmp_path / "c.pt", {"format": "kitseg-checkpoint", "version": 1, "rng": state})
    ck = load_checkpoint(tmp_path / "c.pt")
    set_rng_state(ck["rng"])
    assert torch.equal(torch.rand(3), expected)
    assert not list(tmp_path.glob(".*part*"))  # no temporary left behind
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(KitsegError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"x": 1}, tmp_path / "foreign.pt")
    with pytest.raises(KitsegError, match="not a kitseg checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(KitsegError, match="no trained fold"):
        load_stage_models(tmp_path, "segment")


# ---- the loop ----------------------------------------------------------------------------------
def _tiny_recipe_obj(tmp_path_factory=None):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        return load_recipe(write_tiny_recipe(Path(d) / "r.yaml"))


def _cases(n, target, seed=0):
    out = []
    for i in range(n):
        img, lab = make_case((16, 32, 32), seed=seed + i)
        out.append(make_train_case(f"c{i}", (img + 100) / 100, lab, (3.0, 1.5, 1.5), target, seed=i))
    return out


def test_resume_reproduces_uninterrupted_run_bit_for_bit(tmp_path):
    """3 epochs straight == 2 epochs, a new process state, then --resume to 3 (weights identical)."""
    stage = _tiny_recipe_obj().stage("segment").model_copy(update={"epochs": 3})
    stage = stage.model_copy(update={"augmentation": AugmentSpec(rotate_deg=10, flip_axes=[2], gaussian_blur=0.5,
                                                                  intensity_scale=0.1, probability=0.5)})
    targets = {"localize": LOCALIZE, "segment": KITS}
    train, val = _cases(3, KITS), _cases(1, KITS, seed=10)
    train_stage(stage, train, val, tmp_path / "a", targets, options=TrainOptions(seed=7, progress=False))
    part = train_stage(stage, train, val, tmp_path / "b", targets,
                       options=TrainOptions(seed=7, progress=False, until_epoch=2))
    assert part.epochs_done == 2 and not part.finished
    torch.manual_seed(12345)  # the resumed run must not depend on the state this process is in
    np.random.seed(1)
    resumed = train_stage(stage, train, val, tmp_path / "b", targets,
                          options=TrainOptions(seed=7, progress=False, resume=True))
    assert resumed.finished and resumed.epochs_done == 3
    a = load_checkpoint(tmp_path / "a" / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    strip = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in a["history"]]
    assert strip == [{k: v for k, v in r.items() if not k.endswith("_s")} for r in b["history"]]
    assert (tmp_path / "b" / "log.csv").read_text(encoding="utf-8").count("\n") == 4  # header + 3 epochs
    with pytest.raises(KitsegError, match="--resume"):
        train_stage(stage, train, val, tmp_path / "a", targets, options=TrainOptions(seed=7, progress=False))


def test_time_limit_stops_after_an_epoch_and_resumes(tmp_path):
    """A spent budget (0 s) stops the stage after its first epoch, unfinished; --resume finishes it."""
    stage = _tiny_recipe_obj().stage("segment").model_copy(update={"epochs": 3})
    targets = {"localize": LOCALIZE, "segment": KITS}
    train, val = _cases(2, KITS), _cases(1, KITS, seed=10)
    part = train_stage(stage, train, val, tmp_path, targets,
                       options=TrainOptions(seed=3, progress=False, time_limit_s=0.0))
    assert part.time_limited and not part.finished and part.epochs_done == 1 and len(part.history) == 1
    assert part.seconds > 0  # the call's wall time is reported
    ck = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert ck["epoch"] == 1 and not ck["finished"]
    done = train_stage(stage, train, val, tmp_path, targets, options=TrainOptions(seed=3, progress=False, resume=True))
    assert done.finished and not done.time_limited and done.epochs_done == 3
    # a budget that is not spent changes nothing
    full = train_stage(stage, train, val, tmp_path / "b", targets,
                       options=TrainOptions(seed=3, progress=False, time_limit_s=1e9))
    assert full.finished and not full.time_limited and full.epochs_done == 3


def test_worker_processes_give_the_same_batches():
    """Draws come from the main process and cutting is pure: DataLoader workers change nothing."""
    from kitseg.training.data import TrainBatches

    stage = _tiny_recipe_obj().stage("segment")
    stage = stage.model_copy(update={"sampler": SamplerSpec(foreground_fraction=0.5),
                                     "augmentation": AugmentSpec(rotate_deg=10, flip_axes=[2], gaussian_blur=0.5,
                                                                 probability=0.5)})
    targets = {"localize": LOCALIZE}
    cases = _cases(2, KITS)

    def epoch(workers):
        geometry = Geometry("patch", 3, tuple(stage.patch_size))
        sampler = Sampler(cases, stage.sampler, geometry, stage.augmentation, seed=4)
        batches = TrainBatches(sampler, stage, targets, iterations=3, workers=workers)
        return [b for _ in range(2) for b in batches.epoch()]  # two epochs (persistent workers)

    ref, other = epoch(0), epoch(2)
    assert len(ref) == len(other) == 6
    for (x0, y0, c0), (x1, y1, c1) in zip(ref, other):
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and c0 == c1


PAPER_STAGES = {
    # TuNet: whole-volume sigmoid regions, L = L_whole + L_tumor, Adam 1e-4 + L2, plateau, early stopping
    "tunet_wnet_whole": dict(network={"name": "tunet_wnet", "params": {"base_features": 4, "pool_counts": 2}},
                             target={"kind": "sigmoid", "classes": {"whole": [1, 2], "tumor": [2]}},
                             patch_size=None, sampler={"name": "whole"}, loss={"name": "region_dice"},
                             optimizer={"name": "adam", "lr": 1e-4, "weight_decay": 1e-5},
                             schedule={"name": "plateau", "factor": 0.2, "patience": 6, "early_stopping": 15},
                             augmentation={"rotate_deg": 1.0, "probability": 1.0}),
    # 2.5D VNet: masked CT, slices with kidney x50, hard cases, focal + weighted Dice
    "vnet25d_slices": dict(network={"name": "vnet25d_ms", "params": {"base_features": 4, "n_levels": 3}},
                           inputs=["masked_ct:kidney"], target={"kind": "softmax", "classes": {"tumor": [2]}},
                           patch_size=[16, 16], sampler={"name": "slices", "kidney_slice_oversampling": 50,
                                                         "hard_case": True},
                           loss={"name": "focal_dice", "params": {"dice_class_weights": [0.0, 1.0]}},
                           augmentation={"rotate_deg": 10, "translate_mm": 3, "gaussian_blur": 0.5,
                                         "histogram_equalization": 0.5, "probability": 0.5}),
    # 3D ResUNet: 64-slice windows (here 8), deep supervision mu = 0.33 x 0.8 every 15 epochs, mirroring
    "resunet3d_windows": dict(network={"name": "resunet3d_ds", "params": {"base_features": 4, "pool_counts": 2}},
                              target={"kind": "softmax", "classes": {"kidney": [1, 2]}}, patch_size=[8, 32, 32],
                              sampler={"name": "slices", "kidney_slice_oversampling": 50},
                              loss={"name": "dice", "deep_supervision": {"weights": [1, 0.33, 0.33], "decay": 0.8,
                                                                         "decay_every": 15}},
                              augmentation={"flip_axes": [0, 1, 2]}),
    # 3D FCN-PPM: weighted CE (0.2 / 1 / 2), SGD momentum 0.9, weight decay 1e-5, lr 1e-3, multistep 3, 5, 7
    "fcn_ppm": dict(network={"name": "fcn_ppm", "params": {"base_features": 2, "blocks": [1, 1, 1],
                                                           "ppm_kernels": [2, 4]}},
                    target={"kind": "softmax", "classes": {"kidney": [1], "tumor": [2]}}, patch_size=[16, 16, 16],
                    loss={"name": "weighted_ce", "params": {"class_weights": {"background": 0.2, "kidney": 1.0,
                                                                              "tumor": 2.0}}},
                    optimizer={"name": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-5},
                    schedule={"name": "multistep", "milestones": [3, 5, 7]}, augmentation={"flip_axes": [2]}),
}


@pytest.mark.parametrize("name", sorted(PAPER_STAGES))
def test_paper_stage_configurations_train(tmp_path, name):
    """Each paper's kind of stage (sampler, loss, schedule, 2D/3D network) runs through the loop."""
    from kitseg.preprocessing.spec import PreprocessSpec
    from kitseg.recipes.schema import Stage

    stage = Stage.model_validate({"name": name, "preprocess": PreprocessSpec().model_dump(), "inputs": ["ct"],
                                  "batch_size": 2, "epochs": 2, "iterations_per_epoch": 2, **PAPER_STAGES[name]})
    targets = {"kidney": LOCALIZE, name: stage.target}
    result = train_stage(stage, _cases(2, stage.target), _cases(1, stage.target, seed=5), tmp_path, targets,
                         options=TrainOptions(progress=False, val_per_case=1))
    assert result.finished and len(result.history) == 2
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in result.history)
    ck = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert ck["network"]["name"] == stage.network.name and ck["epoch"] == 2


def test_prior_leaks_grow_the_prior_outside_only_and_are_reproducible():
    import numpy as np

    from kitseg.recipes.schema import AugmentSpec
    from kitseg.training.augment import degrade_prior, sample_params

    prior = np.zeros((20, 40, 40), np.float32)
    prior[6:14, 12:28, 10:20] = 1.0
    spec = AugmentSpec(prior_degrade=1.0, prior_coarse_mm=1.0, prior_morph_mm=0.0, prior_extra=1.0,
                       prior_extra_mm=8.0)
    sizes = []
    for seed in range(5):
        params = sample_params(spec, np.random.default_rng(seed), 3, (2.0, 1.0, 1.0))
        assert params.prior_extra_seed is not None
        a = degrade_prior(prior, params, (2.0, 1.0, 1.0))
        b = degrade_prior(prior, params, (2.0, 1.0, 1.0))
        assert (a == b).all()  # the same draw gives the same leak
        assert (a[prior > 0] == 1).all()  # the true mask stays inside
        sizes.append(int(a.sum() - prior.sum()))
    assert min(sizes) > 0 and len(set(sizes)) > 1  # every draw leaks, by different amounts
    # without prior_extra the stream of draws and the prior are as before
    plain = AugmentSpec(prior_degrade=1.0, prior_coarse_mm=1.0)
    assert sample_params(plain, np.random.default_rng(0), 3).prior_extra_seed is None


def test_poly_schedule_follows_the_budget_clock():
    import torch

    from kitseg.recipes.schema import OptimizerSpec, ScheduleSpec
    from kitseg.training.optim import build_optimizer, build_scheduler, poly_by_progress

    opt = build_optimizer(OptimizerSpec(name="sgd", lr=0.01), [torch.nn.Parameter(torch.zeros(2))])
    build_scheduler(ScheduleSpec(name="poly", power=0.9), opt, epochs=1000)  # records initial_lr
    assert poly_by_progress(opt, 0.0, 0.9) == pytest.approx(0.01)
    assert poly_by_progress(opt, 0.5, 0.9) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_by_progress(opt, 1.7, 0.9) == 0.0  # past the budget: zero, never negative
    assert poly_by_progress(opt, 0.25, 1.0) == pytest.approx(0.0075)  # from the initial lr, not the current one


def test_time_limited_poly_schedule_decays_with_the_clock(tmp_path, monkeypatch):
    """A stage planned for 1000 epochs under a time budget: the poly lr decays with the clock, not the epochs."""
    import csv

    from kitseg.cli.main import main

    clock = iter(range(0, 10**6, 1))  # every perf_counter call advances 1 s
    import kitseg.training.loop as loop

    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(clock)))
    data = make_kits_dataset(tmp_path / "data", n=4)
    recipe = write_tiny_recipe(tmp_path / "tiny.yaml")
    args = ["train", "--recipe", str(recipe), "--data", str(data), "-o", str(tmp_path / "run"), "--no-progress",
            "--n-splits", "2", "--stage", "localize", "--epochs", "1000", "--time-limit", "5",
            "--set", "stages.localize.schedule={name: poly, power: 0.9}"]
    assert main(args) == 0
    rows = list(csv.DictReader((tmp_path / "run" / "localize" / "fold_0" / "log.csv").open(encoding="utf-8")))
    lrs = [float(r["lr"]) for r in rows]
    # stopped by the clock after a few epochs, the lr decayed all along: by epochs alone it would still be
    # 0.99 of the base lr (1e-3) after so few of 1000 epochs
    assert 4 <= len(rows) < 1000 and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] < 0.25e-3 and rows[-1]["precision"]

