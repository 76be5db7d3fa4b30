"""Training a recipe: kitseg train and train_recipe (run folder, folds, the time budget), --tiny."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from kitseg.errors import KitsegError
from kitseg.recipes import load_recipe
from kitseg.stages.checkpoint import load_checkpoint, load_stage_models
from kitseg.training.loop import TrainOptions
from synthetic_kits import make_kits_dataset, write_tiny_recipe


def test_train_recipe_shares_the_time_limit_between_stages(tmp_path, monkeypatch):
    """Each (stage, fold) gets an equal share of the budget left when it starts (a fake clock)."""
    import types

    from kitseg.training import train_recipe as run_mod
    from kitseg.training.loop import StageResult
    from kitseg.training.train_recipe import time_share, train_recipe

    assert time_share(100.0, 4) == 25.0 and time_share(-5.0, 2) == 0.0 and time_share(10.0, 0) == 10.0
    clock = [1000.0]
    shares = []

    def fake_train_stage(stage, train, val, out_dir, targets, *, fold, options):
        shares.append((stage.name, fold, options.time_limit_s))
        clock[0] += 10.0 if stage.name == "localize" else 60.0  # localize ends early, segment overruns
        return StageResult(stage.name, fold, out_dir, 1, False, 1, 0.5, time_limited=True)

    monkeypatch.setattr(run_mod, "train_stage", fake_train_stage)
    monkeypatch.setattr(run_mod, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    data = make_kits_dataset(tmp_path / "data", n=4)
    recipe = write_tiny_recipe(tmp_path / "tiny.yaml")
    options = TrainOptions(progress=False, time_limit_s=120.0)
    results = train_recipe(load_recipe(recipe), data, tmp_path / "run", folds="0,1", options=options, n_splits=2)
    assert [(s, f) for s, f, _ in shares] == [("localize", 0), ("localize", 1), ("segment", 0), ("segment", 1)]
    assert [t for _, _, t in shares] == [30.0, 110 / 3, 50.0, 40.0]  # 120/4, 110/3, 100/2, 40/1
    assert all(r.time_limited for r in results)
    # budget_weight: segment weighs 2, localize 1 -> shares of what is left in proportion to the weights
    shares.clear()
    clock[0] = 1000.0
    weighted = load_recipe(recipe, {"stages.segment.budget_weight": 2.0})
    train_recipe(weighted, data, tmp_path / "run_w", folds="0,1", options=options, n_splits=2)
    expected = [120 * 1 / 6, (120 - 10) * 1 / 5, (120 - 20) * 2 / 4, (120 - 80) * 2 / 2]
    assert [t for _, _, t in shares] == pytest.approx(expected)
    # kitseg train --time-limit takes minutes
    from kitseg.cli.main import main

    shares.clear()
    args = ["train", "--recipe", str(recipe), "--data", str(data), "-o", str(tmp_path / "run"), "--no-progress",
            "--n-splits", "2", "--stage", "segment", "--time-limit", "1.5"]
    assert main(args) == 0
    assert shares == [("segment", 0, 90.0)]


def test_tiny_cascade_trains_end_to_end(tmp_path, capsys):
    from kitseg.cli.main import main

    data = make_kits_dataset(tmp_path / "data", n=4)
    recipe = write_tiny_recipe(tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    args = ["train", "--recipe", str(recipe), "--data", str(data), "-o", str(run), "--no-progress", "--n-splits", "2"]
    assert main(args) == 0
    for name in ("recipe.json", "dataset.json", "fingerprint.json", "splits.json"):
        assert (run / name).is_file(), name
    assert len(json.loads((run / "splits.json").read_text(encoding="utf-8"))["folds"]) == 2
    for stage in ("localize", "segment"):
        fold = run / stage / "fold_0"
        for name in ("checkpoint_last.pt", "checkpoint_best.pt", "log.csv", "curves.png"):
            assert (fold / name).is_file(), f"{stage}/{name}"
        assert (fold / "log.csv").read_text(encoding="utf-8").count("\n") == 3
        assert any((fold / "tensorboard").iterdir())
    models = load_stage_models(run, "segment")
    assert len(models) == 1 and not models[0].training
    ck = load_checkpoint(run / "segment" / "fold_0" / "checkpoint_last.pt")
    assert ck["network"]["in_channels"] == 2 and ck["network"]["out_channels"] == 3 and ck["finished"]
    with torch.no_grad():
        assert models[0](torch.zeros(1, 2, 8, 16, 16)).shape == (1, 3, 8, 16, 16)
    # the same command again refuses to overwrite; --resume sees the finished stages, says so and returns
    assert main(args) == 2
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "localize fold 0: already finished (2 of 2 epochs)" in err and "segment fold 0: already finished" in err
    # another recipe in the same folder is refused; unknown stage too
    assert main([*args, "--resume", "--set", "stages.segment.optimizer.lr=0.5"]) == 2
    assert main([*args, "--stage", "nope"]) == 2


def test_a_fold_that_cannot_exist_is_refused_before_any_preprocessing(tmp_path, capsys):
    from kitseg.cli.main import main

    data = make_kits_dataset(tmp_path / "data", n=3)
    run = tmp_path / "run"
    base = ["train", "--recipe", str(write_tiny_recipe(tmp_path / "tiny.yaml")), "--data", str(data), "-o", str(run),
            "--no-progress"]
    assert main([*base, "--fold", "9"]) == 2  # 5 splits asked, but 3 cases make 3 folds
    assert "fold 9 does not exist: the splits have folds 0..2" in capsys.readouterr().err
    assert not run.exists()  # no fingerprint, splits or cache were made first
    assert main([*base, "--fold", "3", "--n-splits", "4"]) == 2 and not run.exists()


def test_resume_note_says_where_training_continues(tmp_path):
    from kitseg.stages.checkpoint import save_checkpoint
    from kitseg.training.train_recipe import resume_note

    assert resume_note(tmp_path, "segment", 1, 30) == "segment fold 1: no checkpoint yet, starting at epoch 1 of 30"
    save_checkpoint(tmp_path / "checkpoint_last.pt", {"epoch": 12, "finished": False, "model": {"w": torch.ones(3)}})
    assert resume_note(tmp_path, "segment", 1, 30) == "segment fold 1: resuming after epoch 12 of 30"
    save_checkpoint(tmp_path / "checkpoint_last.pt", {"epoch": 20, "finished": True})
    note = resume_note(tmp_path, "segment", 1, 30)
    assert note == "segment fold 1: already finished (20 of 30 epochs, stopped early)"


def test_generic_tiny_shrinks_a_recipe_without_tiny_section(tmp_path):
    from kitseg.nets import build_network
    from kitseg.recipes.__init__ import apply_overrides, validate_recipe
    from kitseg.recipes.profiles import generic_tiny

    recipe = load_recipe(write_tiny_recipe(tmp_path / "r.yaml"))
    big = apply_overrides(recipe.model_dump(), {"stages.segment.patch_size": [40, 128, 128],
                                                "stages.segment.epochs": 300})
    big = validate_recipe(big)
    over = generic_tiny(big)
    assert over["stages.segment.epochs"] == 2 and over["stages.segment.iterations_per_epoch"] == 2
    small = validate_recipe(apply_overrides(big.model_dump(), over))
    seg = small.stage("segment")
    net = build_network(seg.network.name, seg.in_channels, seg.target.out_channels, **seg.network.params)
    assert all(p <= 32 and p % d == 0 for p, d in zip(seg.patch_size, net.size_divisor))


def test_tiny_without_a_tiny_section_applies_generic_tiny_everywhere(tmp_path, capsys):
    """A user's recipe without a tiny section: load_recipe(tiny=True) (kitseg train --tiny) and
    kitseg recipes --tiny shrink it with generic_tiny; --set still wins over the shrink."""
    from kitseg.cli.main import main
    from kitseg.recipes import recipe_path
    from kitseg.recipes.profiles import generic_tiny

    data = yaml.safe_load(recipe_path("zhang2019_cascade").read_text(encoding="utf-8"))
    del data["tiny"]
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump(data), encoding="utf-8")
    full = load_recipe(mine)
    assert not full.tiny and full.stage("segment").epochs > 2
    tiny = load_recipe(mine, ["stages.localize.epochs=3"], tiny=True)
    expected = generic_tiny(full)
    for s in tiny.stages:
        assert s.iterations_per_epoch == 2 and s.batch_size <= 2 and max(s.patch_size) <= 32
        assert s.network.params == expected[f"stages.{s.name}.network.params"]
    assert tiny.stage("segment").epochs == 2 and tiny.stage("localize").epochs == 3
    capsys.readouterr()
    assert main(["recipes", str(mine), "--tiny"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert [s["epochs"] for s in shown["stages"]] == [2, 2]
    assert [s["patch_size"] for s in shown["stages"]] == [list(s.patch_size) for s in tiny.stages]


def test_parse_folds():
    from kitseg.training.train_recipe import parse_folds

    assert parse_folds("all", 5) == [0, 1, 2, 3, 4]
    assert parse_folds("0,2", 5) == [0, 2] and parse_folds(3, 5) == [3] and parse_folds(None, 5) == [0]
    with pytest.raises(KitsegError, match="does not exist"):
        parse_folds("5", 5)
    with pytest.raises(KitsegError, match="fold number"):
        parse_folds("first", 5)


def test_ensemble_trains_members_with_their_own_seeds_and_predict_averages_them(tmp_path, capsys):
    """`kitseg train --ensemble 2`: a second network per (stage, fold) in fold_<k>/member_1 with its own
    seed; load_run, predict_case and kitseg export take every member."""
    import numpy as np

    from kitseg.cli.main import main
    from kitseg.inference import LoadedRun, load_run, predict_case
    from kitseg.models import export
    from kitseg.volume import Volume
    from synthetic_kits import make_case

    data = make_kits_dataset(tmp_path / "data", n=4)
    recipe = write_tiny_recipe(tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    args = ["train", "--recipe", str(recipe), "--data", str(data), "-o", str(run), "--no-progress", "--n-splits", "2",
            "--ensemble", "2"]
    assert main(args) == 0
    assert "segment fold 0 member 1: finished" in capsys.readouterr().out
    for stage in ("localize", "segment"):
        first = load_checkpoint(run / stage / "fold_0" / "checkpoint_best.pt")["model"]
        second = load_checkpoint(run / stage / "fold_0" / "member_1" / "checkpoint_best.pt")["model"]
        assert any(not torch.equal(first[k], second[k]) for k in first), f"{stage}: members trained alike"
    loaded = load_run(run)
    assert [len(loaded.models[s]) for s in ("localize", "segment")] == [2, 2]
    img, _ = make_case((16, 32, 32), seed=99)
    ct = Volume.from_geometry(img, spacing=(3.0, 1.5, 1.5))
    _, both = predict_case(ct, loaded, return_probabilities=True)
    # the same models as two one-member runs ensembled: the same probabilities
    single = [LoadedRun(loaded.recipe, loaded.dataset, loaded.fingerprint,
                        {s: [m[i]] for s, m in loaded.models.items()}) for i in range(2)]
    _, pair = predict_case(ct, single, return_probabilities=True)
    np.testing.assert_allclose(both.array.astype(np.float32), pair.array.astype(np.float32), atol=2e-3)
    model_file = export(run, tmp_path / "model.kitseg")
    assert [len(load_run(model_file).models[s]) for s in ("localize", "segment")] == [2, 2]
    assert [len(load_run(model_file, folds=[0]).models[s]) for s in ("localize", "segment")] == [2, 2]
    # --resume says which member it continues; the recipe's own `ensemble` is the default
    assert main([*args, "--resume"]) == 0
    assert "segment fold 0 member 1: already finished" in capsys.readouterr().err
    three = tmp_path / "run3"
    base = ["train", "--recipe", str(recipe), "--data", str(data), "-o", str(three), "--no-progress", "--n-splits", "2",
            "--stage", "segment"]
    assert main([*base, "--set", "ensemble=3"]) == 0
    assert len(load_stage_models(three, "segment")) == 3
    # --ensemble with --resume adds members to a finished run; member 0 is left as it was
    before = load_checkpoint(three / "segment" / "fold_0" / "checkpoint_last.pt")["model"]
    assert main([*base, "--set", "ensemble=3", "--ensemble", "4", "--resume"]) == 0
    assert len(load_stage_models(three, "segment")) == 4
    after = load_checkpoint(three / "segment" / "fold_0" / "checkpoint_last.pt")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_stage_trains_on_its_earlier_stage_cross_validated_predictions(tmp_path, capsys):
    """prior_source predicted (nnU-Net's cascade): kitseg train trains the localizer on every fold,
    predicts each case with the fold model that did not see it (RUN/oof/localize), crops stage 2's
    boxes around those predictions and feeds them as its prior."""
    import numpy as np

    from kitseg.cli.main import main
    from kitseg.datasets import open_dataset
    from kitseg.inference import load_run
    from kitseg.inference.cascade import run_stages
    from kitseg.io import read_volume
    from kitseg.precision import resolve_precision
    from kitseg.preprocessing.cache import load_case, read_index
    from kitseg.preprocessing.pipeline import preprocess_case
    from kitseg.stages.grid import to_entry_grid
    from kitseg.stages.loaded_run import LoadedRun
    from kitseg.training.splits import load_splits
    from kitseg.training.train_recipe import load_train_cases, train_recipe

    data = make_kits_dataset(tmp_path / "data", n=4)
    recipe_file = write_tiny_recipe(tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    args = ["train", "--recipe", str(recipe_file), "--data", str(data), "-o", str(run), "--no-progress",
            "--n-splits", "2", "--set", "stages.segment.prior_source=predicted"]
    assert main(args) == 0
    assert "segment fold 0: finished" in capsys.readouterr().out
    assert all((run / "localize" / f"fold_{k}" / "checkpoint_best.pt").is_file() for k in (0, 1))
    assert not (run / "segment" / "fold_1").exists()
    oof = run / "oof" / "localize"
    cases = {c.case_id: c for c in open_dataset(data).cases}
    assert sorted(p.name for p in oof.iterdir()) == sorted(f"{c}.nii.gz" for c in cases)
    full = load_run(run)
    recipe, spec = full.recipe, full.recipe.stage("segment").preprocess
    cid = load_splits(run / "splits.json").folds[1].val[0]  # held out by fold 1: fold 1's localizer predicts it
    ct = read_volume(cases[cid].image)
    head = recipe.model_copy(update={"stages": recipe.stages[:1]})
    fold1 = LoadedRun(head, full.dataset, full.fingerprint, {"localize": load_stage_models(run, "localize", [1])})
    prec = resolve_precision("auto", "cpu")  # the training's precision, which the predictions use
    expected = run_stages(ct, [fold1], torch.device("cpu"), prec=prec, until="localize")["localize"].labels.array
    predicted = read_volume(oof / f"{cid}.nii.gz").array
    assert np.array_equal(predicted, expected)
    # stage 2's cache is cropped around the prediction, and its prior is the prediction on the box's grid
    cache = run / "cache" / "segment"
    entries = preprocess_case(ct, read_volume(cases[cid].label), spec, full.fingerprint, case_id=cid,
                              roi_from=predicted)
    cached = [load_case(cache, e) for e in read_index(cache).cases[cid]]
    assert [c.record.crop for c in cached] == [e.record.crop for e in entries]
    train_cases = load_train_cases(cache, [cid], recipe.stage("segment"), 0, oof)
    for tc, c in zip(train_cases, cached):
        assert np.array_equal(tc.prior, to_entry_grid(predicted > 0, c.record) > 0)
    # without the predictions the stage is refused, with one line
    with pytest.raises(KitsegError, match="cross-validated predictions"):
        train_recipe(recipe, data, tmp_path / "other", stages=["segment"], options=TrainOptions(progress=False),
                     n_splits=2)
    assert main([*args[:6], str(tmp_path / "only2"), *args[7:], "--stage", "segment"]) == 2
    assert "train it on every fold first" in capsys.readouterr().err


def test_train_cascade_shares_the_time_limit_between_its_training_calls(tmp_path, monkeypatch):
    """With prior_source predicted, the budget goes to (localize fold 0), (localize's other folds), (segment fold 0)
    in proportion to their jobs and budget weights; the cross-validated predictions are outside it."""
    import types

    from kitseg import cascade_training as ct
    from kitseg.training.loop import StageResult

    clock, calls = [1000.0], []

    def fake_train_recipe(recipe, data_dir, run_dir, *, folds, stages, options, prior_dirs=None, **kw):
        calls.append((stages, folds, options.time_limit_s, sorted(prior_dirs or {})))
        out = []
        for f in ([folds] if isinstance(folds, int) else folds):
            d = run_dir / stages[0] / f"fold_{f}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "checkpoint_last.pt").write_bytes(b"")
            out.append(StageResult(stages[0], f, d, 1, True, 1, 0.5))
        clock[0] += 30.0
        return out

    monkeypatch.setattr(ct, "train_recipe", fake_train_recipe)
    monkeypatch.setattr(ct, "predict_out_of_fold", lambda recipe, data, run, stage, options: run / "oof" / stage)
    monkeypatch.setattr(ct, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    data = make_kits_dataset(tmp_path / "data", n=4)
    recipe = load_recipe(write_tiny_recipe(tmp_path / "tiny.yaml"), {"stages.segment.prior_source": "predicted",
                                                                     "stages.segment.budget_weight": 2.0})
    results = ct.train_cascade(recipe, data, tmp_path / "run", folds=0, n_splits=3,
                               options=TrainOptions(progress=False, time_limit_s=150.0))
    assert [(c[0], c[1]) for c in calls] == [(["localize"], [0]), (["localize"], [1, 2]), (["segment"], [0])]
    # jobs: localize 1 fold (weight 1), localize 2 folds (1 each), segment 1 fold (weight 2): 1 + 2 + 2
    assert [c[2] for c in calls] == pytest.approx([150 / 5, 120 * 2 / 4, 90 * 2 / 2])
    assert calls[2][3] == ["segment"] and len(results) == 4
