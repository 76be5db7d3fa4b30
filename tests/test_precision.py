"""The precision switch (kitseg.precision): auto's choice per device, bf16 training and prediction that
agree with fp32, fp32 checkpoints whatever the training precision, and --no-amp as --precision fp32."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from kitseg import precision as P
from kitseg.errors import KitsegError
from kitseg.stages.checkpoint import load_checkpoint
from synthetic_kits import make_kits_dataset, write_tiny_recipe


def test_auto_on_a_cpu_with_bf16_units_is_bf16(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_units", lambda: ("amx_bf16",))
    p = P.resolve_precision("auto", "cpu")
    assert (p.name, p.dtype, p.uses_scaler) == ("bf16", torch.bfloat16, False)
    assert "amx_bf16" in p.describe()


def test_auto_on_a_cpu_with_avx512_bf16_but_no_amx_stays_fp32(monkeypatch):
    """There torch's bf16 convolution gradients measured non-finite on small inputs: bf16 only when asked for."""
    monkeypatch.setattr(P, "cpu_bf16_units", lambda: ("avx512_bf16",))
    p = P.resolve_precision("auto", "cpu")
    assert p.name == "fp32" and p.dtype is None and "no AMX" in p.describe()
    assert P.resolve_precision("bf16", "cpu").dtype == torch.bfloat16


def test_auto_on_a_cpu_without_bf16_units_stays_fp32(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_units", lambda: ())
    p = P.resolve_precision("auto", "cpu")
    assert p.name == "fp32" and p.dtype is None
    with p.autocast():  # a no-op context
        assert not torch.is_autocast_enabled("cpu")


def test_auto_on_cuda_is_bf16_where_supported_else_fp16_with_a_scaler(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.resolve_precision("auto", "cuda").name == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    p = P.resolve_precision(None, "cuda")
    assert p.name == "fp16" and p.uses_scaler
    with pytest.raises(KitsegError, match="does not support bf16"):
        P.resolve_precision("bf16", "cuda")


def test_explicit_choices_and_bad_ones():
    assert P.resolve_precision("FP32", "cpu").name == "fp32"
    assert P.resolve_precision("bf16", "cpu").dtype == torch.bfloat16
    with pytest.raises(KitsegError, match="fp16 is for CUDA"):
        P.resolve_precision("fp16", "cpu")
    with pytest.raises(KitsegError, match="unknown precision 'fp8'"):
        P.resolve_precision("fp8", "cpu")


def test_cpu_probe_reports_only_known_units():
    assert set(P.cpu_bf16_units()) <= {"amx_bf16", "avx512_bf16"}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny cascade trained twice from the same seed, for the same steps: fp32 and bf16."""
    from kitseg.cli.main import main

    units = P.cpu_bf16_units()
    if "avx512_bf16" in units and "amx_bf16" not in units:
        pytest.skip("this CPU has AVX512-BF16 without AMX, where torch's bf16 convolution gradients of the tiny "
                    "networks turn non-finite (docs/TRAINING.md; auto keeps fp32 there)")

    tmp = tmp_path_factory.mktemp("precision")
    data = make_kits_dataset(tmp / "data", n=6, shape=(24, 48, 48), seed=10)
    recipe = write_tiny_recipe(tmp / "tiny.yaml")
    runs = {}
    for name in ("fp32", "bf16"):
        run = tmp / name
        args = ["train", "--recipe", str(recipe), "--data", str(data), "-o", str(run), "--no-progress",
                "--n-splits", "3", "--epochs", "12", "--precision", name,
                "--set", "stages.localize.iterations_per_epoch=4", "--set", "stages.segment.iterations_per_epoch=8",
                "--set", "stages.segment.optimizer.lr=3e-3"]
        assert main(args) == 0
        runs[name] = run
    return tmp, data, runs


def test_bf16_training_records_its_precision_and_writes_fp32_checkpoints(trained):
    _, _, runs = trained
    for stage in ("localize", "segment"):
        ck = load_checkpoint(runs["bf16"] / stage / "fold_0" / "checkpoint_best.pt")
        assert ck["precision"] == "bf16"
        assert all(v.dtype == torch.float32 for v in ck["model"].values() if v.is_floating_point())
        rows = list(csv.DictReader((runs["bf16"] / stage / "fold_0" / "log.csv").open(encoding="utf-8")))
        assert rows and all(r["precision"] == "bf16" for r in rows)


def test_bf16_training_reaches_the_validation_dice_of_fp32(trained):
    _, _, runs = trained
    for stage in ("localize", "segment"):
        dice = {}
        for name, run in runs.items():
            rows = list(csv.DictReader((run / stage / "fold_0" / "log.csv").open(encoding="utf-8")))
            dice[name] = float(rows[-1]["val_dice"])
        assert dice["fp32"] > 0.5, dice  # the check means something only if training learned
        assert abs(dice["bf16"] - dice["fp32"]) <= 0.02, (stage, dice)


def test_bf16_and_fp32_predictions_of_one_model_agree(trained):
    from kitseg.inference import load_run, predict

    tmp, _, runs = trained
    held_out = make_kits_dataset(tmp / "held_out", n=2, shape=(24, 48, 48), seed=50)
    run = load_run(runs["fp32"])  # an fp32-trained checkpoint predicts in bf16 too (and vice versa below)
    for case in ("case_00000", "case_00001"):
        ct = held_out / case / "imaging.nii.gz"
        a = predict(ct, run, precision="fp32").array
        b = predict(ct, run, precision="bf16").array
        assert (a == 1).any() and (a == 2).any()
        assert _dice(a > 0, b > 0) >= 0.99
        assert _dice(a == 2, b == 2) >= 0.97
    c = predict(held_out / "case_00000" / "imaging.nii.gz", load_run(runs["bf16"]), precision="fp32").array
    assert (c > 0).any()


def test_no_amp_is_precision_fp32_and_contradictions_are_refused(tmp_path):
    from kitseg.cli.main import main

    data = make_kits_dataset(tmp_path / "data", n=4)
    recipe = write_tiny_recipe(tmp_path / "tiny.yaml")
    base = ["train", "--recipe", str(recipe), "--data", str(data), "--no-progress", "--n-splits", "2", "--epochs", "1",
            "--stage", "localize"]
    assert main([*base, "-o", str(tmp_path / "run"), "--no-amp"]) == 0
    ck = load_checkpoint(tmp_path / "run" / "localize" / "fold_0" / "checkpoint_last.pt")
    assert ck["precision"] == "fp32"
    assert main([*base, "-o", str(tmp_path / "run2"), "--no-amp", "--precision", "bf16"]) == 2
    assert main([*base, "-o", str(tmp_path / "run3"), "--precision", "fp16", "--device", "cpu"]) == 2
    assert not (tmp_path / "run3").exists()
