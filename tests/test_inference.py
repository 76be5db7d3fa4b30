"""Inference: sliding window (vs MONAI), the papers' variants, ensembles, the cascade, geometry, folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from monai.inferers import sliding_window_inference

from inference_runs import GEOMETRY_RECIPE, recipe_from_yaml, untrained_models
from kitseg.datasets import KITS19, KITS23
from kitseg.errors import KitsegError
from kitseg.inference import LoadedRun, load_run, predict_case
from kitseg.inference.ensemble import EnsemblePredictor, average_probabilities
from kitseg.inference.sliding import count_windows, gaussian_weights, sliding_window, window_starts
from kitseg.inference.variants import majority_vote, mirror_flips, slices25d, stack_slices, whole, z_windows
from kitseg.io import read_volume
from kitseg.recipes import apply_overrides, validate_recipe
from kitseg.stages.grid import paste_labels, resample_to_grid
from kitseg.training.loop import TrainOptions
from kitseg.training.train_recipe import train_recipe
from kitseg.volume import Volume
from synthetic_kits import TINY_RECIPE, make_case, make_kits_dataset

REPO = Path(__file__).resolve().parents[1]


def _conv_predictor(dims: int, cin: int = 2, cout: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(cin, cout, 3, padding=1)
    return lambda x: torch.softmax(conv(x), 1)


# ---------------------------------------------------------------------------------------------
# Sliding window
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,patch,overlap", [
    ((21, 40, 45), (16, 32, 32), 0.5),
    ((21, 40, 45), (16, 32, 32), 0.25),
    ((10, 20, 61), (16, 32, 32), 0.5),  # smaller than the patch on two axes: padded as MONAI does
    ((50, 70), (32, 32), 0.5),  # 2D
])
def test_sliding_window_equals_monai(shape, patch, overlap):
    predictor = _conv_predictor(len(shape))
    img = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    ours = sliding_window(img, predictor, patch, overlap)
    with torch.inference_mode():
        ref = sliding_window_inference(img[None], patch, 1, predictor, overlap, mode="gaussian", sigma_scale=0.125)[0]
    assert ours.shape == (3, *shape)
    assert float((ours - ref).abs().max()) < 1e-5
    # batching windows does not change the result
    batched = sliding_window(img, predictor, patch, overlap, sw_batch_size=3)
    assert float((batched - ours).abs().max()) < 1e-6


def test_window_starts_cover_the_axis_and_end_at_the_border():
    for size in range(8, 80, 7):
        for patch in (8, 16, 24):
            if patch > size:
                continue
            starts = window_starts(size, patch, max(1, patch // 2))
            assert starts[0] == 0 and starts[-1] + patch == size
            assert all(b - a <= patch for a, b in zip(starts, starts[1:]))
    assert window_starts(64, 64, 32) == [0]
    assert count_windows((37, 50, 61), (16, 32, 32), 0.5) == 4 * 3 * 3


def test_gaussian_weights_peak_in_the_centre_and_floor():
    w = gaussian_weights((16, 32, 32))
    assert w.shape == (16, 32, 32) and float(w.max()) == float(w[7, 15, 15]) == float(w[8, 16, 16]) <= 1
    assert float(gaussian_weights((17, 33, 33)).max()) == pytest.approx(1.0)
    assert float(w.min()) == pytest.approx(1e-3)  # the floor, reached at the corners
    assert float(w[8, 16, 16]) > float(w[4, 16, 16]) > float(w[4, 8, 16]) > float(w[4, 8, 8])


def test_padding_to_the_network_divisor_and_whole_axes():
    seen = []

    def predictor(x):
        seen.append(tuple(x.shape[2:]))
        assert all(n % d == 0 for n, d in zip(x.shape[2:], (4, 8, 8)))
        return torch.cat([1 - torch.sigmoid(x[:, :1]), torch.sigmoid(x[:, :1])], 1)

    img = torch.randn(1, 13, 30, 45)
    out = sliding_window(img, predictor, (None, 16, 16), 0.5, divisor=(4, 8, 8))
    assert out.shape == (2, 13, 30, 45)
    assert all(s[0] == 16 for s in seen)  # the whole z axis, rounded up to the divisor
    np.testing.assert_allclose(out[1].numpy(), torch.sigmoid(img[0]).numpy(), atol=1e-5)


def test_out_of_memory_falls_back_to_one_window_on_the_cpu():
    predictor = _conv_predictor(3)
    calls = {"big": 0}

    def fragile(x):
        if x.shape[0] > 1:
            calls["big"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return predictor(x)

    img = torch.randn(2, 20, 40, 40)
    out = sliding_window(img, fragile, (16, 32, 32), 0.5, sw_batch_size=4)
    ref = sliding_window(img, predictor, (16, 32, 32), 0.5)
    assert calls["big"] == 1
    assert float((out - ref).abs().max()) < 1e-6

    def always(x):
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(KitsegError, match="out of memory"):
        sliding_window(img, always, (16, 32, 32), 0.5)


# ---------------------------------------------------------------------------------------------
# The papers' variants
# ---------------------------------------------------------------------------------------------
def _position_predictor(x):
    """Channel 0: the slice's position inside the window (0..63); channel 1: the window's start (input)."""
    b, _, z, y, xx = x.shape
    pos = torch.arange(z, dtype=torch.float32)[None, :, None, None].expand(b, z, y, xx)
    return torch.stack([pos, x[:, 0, :1].expand(b, z, y, xx) - pos], 1)


def test_z_windows_keep_the_centre_of_each_window():
    nz = 130
    img = torch.arange(nz, dtype=torch.float32)[None, :, None, None].expand(1, nz, 4, 4).contiguous()
    out = z_windows(img, _position_predictor, 64, 32, (16, 48), (None, None))
    pos = out[0, :, 0, 0].numpy()
    assert out.shape == (2, nz, 4, 4)
    np.testing.assert_allclose(pos[:16], np.arange(16), atol=1e-3)  # first window keeps its start
    np.testing.assert_allclose(pos[-16:], np.arange(48, 64), atol=1e-3)  # last window keeps its end
    middle = pos[16:-16]
    assert middle.min() >= 16 - 1e-3 and middle.max() <= 48 + 1e-3  # every other slice from a window centre
    with pytest.raises(KitsegError):
        z_windows(img, _position_predictor, 64, 40, (16, 48))


def test_majority_vote_over_overlapping_windows():
    nz = 96  # windows of 64 slices every 16: starts 0, 16, 32

    def voter(x):
        start = int(x[0, 0, 0, 0, 0])
        cls = 1 if start % 32 == 0 else 2  # windows 0 and 32 vote 1, window 16 votes 2
        p = torch.zeros((x.shape[0], 3, *x.shape[2:]))
        p[:, cls] = 0.9
        p[:, 0] = 0.1
        return p

    img = torch.arange(nz, dtype=torch.float32)[None, :, None, None].expand(1, nz, 2, 2).contiguous()
    votes = majority_vote(img, voter, window=64, stride=16, in_plane=(None, None))
    labels = votes.argmax(0)[:, 0, 0].numpy()
    assert (labels[:16] == 1).all()  # only window 0
    np.testing.assert_allclose(votes[1, 40, 0, 0].item(), 2 / 3, atol=1e-6)  # 2 of 3 windows
    assert (labels[32:64] == 1).all()
    assert (labels[80:] == 1).all()  # only window 32


def test_majority_vote_ties_break_by_summed_probability():
    """Two windows (starts 0 and 8 of 16 slices) overlap on slices 8-15 and disagree there: the
    tie goes to the class whose summed probability is larger, whichever class it is."""
    from kitseg.inference.sliding import TIE_BONUS

    def make_voter(fg_confident: bool):
        def voter(x):
            start = int(x[0, 0, 0, 0, 0])
            p = torch.zeros((x.shape[0], 2, *x.shape[2:]))
            if start == 0:  # votes foreground
                p[:, 1] = 0.9 if fg_confident else 0.55
            else:  # votes background
                p[:, 1] = 0.4 if fg_confident else 0.1
            p[:, 0] = 1 - p[:, 1]
            return p
        return voter

    img = torch.arange(24, dtype=torch.float32)[None, :, None, None].expand(1, 24, 2, 2).contiguous()
    for confident, winner in ((True, 1), (False, 0)):
        votes = majority_vote(img, make_voter(confident), window=16, stride=8, in_plane=(None, None))
        labels = votes.argmax(0)[:, 0, 0].numpy()
        assert (labels[:8] == 1).all() and (labels[16:] == 0).all()  # one window each: no tie
        assert (labels[8:16] == winner).all()  # tied 1 : 1, summed probabilities decide
        np.testing.assert_allclose(votes[winner, 12, 0, 0].item(), 0.5 + TIE_BONUS / 2, atol=1e-6)
        np.testing.assert_allclose(votes[1 - winner, 12, 0, 0].item(), 0.5, atol=1e-6)
        np.testing.assert_allclose(votes[1, 4, 0, 0].item(), 1.0, atol=1e-6)  # no tie: plain fractions


def test_stack_slices_is_slice_major_and_clamped():
    img = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1, 1).expand(2, 5, 3, 3).contiguous()
    x = stack_slices(img, [0, 4], 3)
    assert x.shape == (2, 6, 3, 3)
    for b, z in enumerate([0, 4]):
        for s in range(3):
            for c in range(2):
                zz = min(max(z + s - 1, 0), 4)
                assert float(x[b, s * 2 + c, 0, 0]) == float(img[c, zz, 0, 0])


def test_slices25d_predicts_each_centre_slice():
    img = torch.randn(1, 7, 12, 20)

    def centre(x):  # a "2.5D net" returning the centre slice of a 3-slice stack
        return torch.cat([x[:, 1:2], -x[:, 1:2]], 1)

    out = slices25d(img, centre, 3, batch_size=3, divisor=(8, 8))
    assert out.shape == (2, 7, 12, 20)
    np.testing.assert_allclose(out[0].numpy(), img[0].numpy(), atol=1e-6)
    tiled = slices25d(img, centre, 3, in_plane=(8, 8), batch_size=2)
    np.testing.assert_allclose(tiled[0].numpy(), img[0].numpy(), atol=1e-5)


def test_mirror_flips():
    assert len(mirror_flips([0, 1, 2])) == 8 and mirror_flips([0, 1, 2])[0] == ()
    assert mirror_flips([2]) == [(), (2,)]


# ---------------------------------------------------------------------------------------------
# Ensembles
# ---------------------------------------------------------------------------------------------
class _Const(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)

    def forward(self, x):
        return self.logits[None, :, None, None, None].expand(x.shape[0], -1, *x.shape[2:])


class _Ramp(torch.nn.Module):
    """Not mirror-symmetric: logit of class 1 grows along x."""

    def forward(self, x):
        ramp = torch.arange(x.shape[-1], dtype=torch.float32).expand(*x.shape[2:])
        return torch.stack([torch.zeros_like(ramp), ramp])[None].expand(x.shape[0], -1, *x.shape[2:])


def test_ensemble_averages_probabilities_over_models_and_flips():
    x = torch.zeros(1, 1, 2, 3, 4)
    a, b = _Const([0.0, 2.0]), _Const([1.0, -1.0])
    p = EnsemblePredictor([a, b], "softmax")(x)
    expect = (torch.softmax(torch.tensor([0.0, 2.0]), 0) + torch.softmax(torch.tensor([1.0, -1.0]), 0)) / 2
    np.testing.assert_allclose(p[0, :, 0, 0, 0].numpy(), expect.numpy(), atol=1e-6)
    weighted = EnsemblePredictor([a, b], "softmax", weights=[3, 1])(x)
    expect_w = (3 * torch.softmax(torch.tensor([0.0, 2.0]), 0) + torch.softmax(torch.tensor([1.0, -1.0]), 0)) / 4
    np.testing.assert_allclose(weighted[0, :, 0, 0, 0].numpy(), expect_w.numpy(), atol=1e-6)
    # mirroring TTA along x: the mean of the ramp's probabilities and those of its mirror image
    ramp = torch.sigmoid(torch.arange(4, dtype=torch.float32))
    tta = EnsemblePredictor([_Ramp()], "sigmoid", mirror_flips([2]))(x)
    np.testing.assert_allclose(tta[0, 1, 0, 0].numpy(), ((ramp + ramp.flip(0)) / 2).numpy(), atol=1e-6)
    np.testing.assert_allclose(EnsemblePredictor([_Ramp()], "sigmoid")(x)[0, 1, 0, 0].numpy(), ramp.numpy())


def test_average_probabilities():
    maps = [np.full((2, 3), v, np.float32) for v in (0.2, 0.4, 0.9)]
    np.testing.assert_allclose(average_probabilities(maps), 0.5, atol=1e-6)
    np.testing.assert_allclose(average_probabilities(maps, [1, 1, 0]), 0.3, atol=1e-6)
    with pytest.raises(KitsegError):
        average_probabilities([np.zeros(2), np.zeros(3)])


# ---------------------------------------------------------------------------------------------
# Moving outputs between grids
# ---------------------------------------------------------------------------------------------
def _ball(shape, centre, radius, spacing):
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius**2


def test_paste_labels_exact_on_a_sub_grid_and_close_after_resampling():
    fine = Volume.from_geometry(np.zeros((40, 60, 60), np.uint8), spacing=(2.0, 1.0, 1.0), origin=(5, -3, 7))
    out = np.zeros(fine.shape, np.uint8)
    sub = np.zeros((10, 20, 20), np.uint8)
    sub[2:8, 5:15, 5:15] = 1
    sub[4:6, 8:12, 8:12] = 2
    sub_aff = fine.affine.copy()
    sub_aff[:3, 3] = fine.index_to_world((12, 30, 25))
    paste_labels(sub, sub_aff, out, fine.affine)
    np.testing.assert_array_equal(out[12:22, 30:50, 25:45], sub)
    assert out.sum() == sub.sum()
    # a ball predicted on a grid twice as coarse comes back close to the fine ball
    truth = _ball(fine.shape, (40, 30, 30), 14, (2, 1, 1))
    coarse_aff = fine.affine.copy()
    coarse_aff[:3, :3] *= 2
    coarse_aff[:3, 3] = fine.index_to_world((0.5, 0.5, 0.5))
    coarse = _ball((20, 30, 30), (40, 30, 30), 14, (4, 2, 2)).astype(np.uint8)
    out = np.zeros(fine.shape, np.uint8)
    paste_labels(coarse, coarse_aff, out, fine.affine)
    def dice(a):
        return 2 * (truth & a).sum() / (truth.sum() + a.sum())

    blocky = coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2) > 0  # nearest-neighbour upsampling
    assert dice(out > 0) > dice(blocky) > 0.9  # linear per-label restoring beats blocks


def test_resample_to_grid_identity_and_default():
    arr = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    aff = np.eye(4)
    np.testing.assert_array_equal(resample_to_grid(arr, aff, arr.shape, aff), arr)
    moved = aff.copy()
    moved[:3, 3] = (0, 0, 100)  # far outside
    assert (resample_to_grid(arr, aff, arr.shape, moved) == 0).all()


# ---------------------------------------------------------------------------------------------
# The cascade runner
# ---------------------------------------------------------------------------------------------
def _synthetic_ct(shape=(24, 40, 40), spacing=(3.0, 1.5, 1.5), seed=0) -> Volume:
    img, _ = make_case(shape, seed)
    return Volume.from_geometry(img, spacing=spacing, origin=(10.0, -20.0, 30.0))


TUNET_LIKE = """
name: tunet_like
title: L-Net, W-Net and T-Net chained (untrained)
paper: tests
stages:
  - name: lnet
    network: {name: tunet_lnet, params: {base_features: 2, pool_counts: 2}}
    target: {kind: sigmoid, classes: {whole: [1, 2]}}
    preprocess: {target_shape: [16, 16, 16], intensity: {scheme: volume_zscore}}
    inference: {mode: whole}
  - name: wnet
    network: {name: tunet_wnet, params: {base_features: 2, pool_counts: 2, se: true}}
    target: {kind: sigmoid, classes: {whole: [1, 2]}}
    preprocess: {target_shape: [16, 32, 32], intensity: {scheme: volume_zscore, median_denoise: true}}
    patch_size: [16, 16, 16]
  - name: tnet
    network: {name: tunet_tnet, params: {base_features: 2, pool_counts: 2, se: true}}
    inputs: [ct, "prob:wnet"]
    target: {kind: sigmoid, classes: {tumor: [2]}}
    preprocess: {target_shape: [16, 32, 32], intensity: {scheme: volume_zscore}}
    patch_size: [16, 16, 16]
final: {op: tunet_algorithm1, whole_stage: wnet, tumor_stage: tnet, mask_stage: lnet}
"""

RESUNET_LIKE = """
name: resunet_like
title: 3D ResUNet kidney (z-windows) + 2.5D VNet tumor on the masked CT (untrained)
paper: tests
stages:
  - name: kidney
    network: {name: resunet3d_ds, params: {base_features: 2, pool_counts: 2}}
    target: {kind: softmax, classes: {kidney: [1, 2]}}
    preprocess: {slice_spacing: 4.0, in_plane_shape: [32, 32], intensity: {scheme: volume_zscore}}
    patch_size: [8, 32, 32]
    inference: {mode: z_windows, window: 8, stride: 4, keep: [2, 6]}
  - name: tumor
    network: {name: vnet25d_ms, params: {base_features: 2, n_levels: 3, context_slices: 3}}
    inputs: ["masked_ct:kidney"]
    roi_from: kidney
    target: {kind: softmax, classes: {tumor: [2]}}
    preprocess: {slice_spacing: 3.0, roi: {margin_mm: 3.0, axes: z}, intensity: {scheme: volume_zscore}}
    inference: {mode: slices25d, batch_size: 4}
    postprocess: [{op: largest_components, params: {n: 1}}]
final: {op: merge, kidney_stage: kidney, tumor_stage: tumor}
"""

FCN_LIKE = """
name: fcn_like
title: one stage, majority voting over 8-slice windows, KiTS23 labels (untrained)
paper: tests
labels: kits23
stages:
  - name: fcn
    network: {name: unet3d, params: {base_features: 2, pool_counts: 2}}
    target: {kind: softmax, classes: {kidney: [1], tumor: [2], cyst: [3]}}
    preprocess: {target_spacing: [3.0, 3.0, 3.0], intensity: {scheme: window, window: [-200.0, 500.0]}}
    patch_size: [8, 16, 16]
    inference: {mode: majority_vote, window: 8, stride: 4}
    postprocess: [{op: largest_components, params: {n: 2}}, {op: tumor_in_kidney}]
final: {op: argmax, stage: fcn}
"""


@pytest.mark.parametrize("text,values", [(TUNET_LIKE, {0, 1, 2}), (RESUNET_LIKE, {0, 1, 2}),
                                         (FCN_LIKE, {0, 1, 2, 3}), (GEOMETRY_RECIPE, {0, 1, 2})])
def test_every_recipe_shape_chains_through_the_cascade(text, values):
    recipe = recipe_from_yaml(text)
    run = LoadedRun(recipe, KITS23 if recipe.labels == "kits23" else KITS19, None, untrained_models(recipe))
    ct = _synthetic_ct()
    out, probs = predict_case(ct, run, return_probabilities=True)
    assert out.shape == ct.shape and out.same_geometry(ct) and out.array.dtype == np.uint8
    assert set(np.unique(out.array)) <= values
    assert probs.array.shape[1:] == ct.shape and probs.array.dtype == np.float16
    if recipe.stages[-1].target.kind == "softmax":
        np.testing.assert_allclose(probs.array.astype(np.float32).sum(0), 1.0, atol=1e-2)


def test_ensembles_of_folds_and_of_runs():
    recipe = recipe_from_yaml(GEOMETRY_RECIPE)
    ct = _synthetic_ct()
    a, b = untrained_models(recipe, seed=1), untrained_models(recipe, seed=2)
    run_a, run_b = (LoadedRun(recipe, KITS19, None, m) for m in (a, b))
    both_folds = LoadedRun(recipe, KITS19, None, {k: a[k] + b[k] for k in a})
    _, pa = predict_case(ct, run_a, return_probabilities=True)
    _, pf = predict_case(ct, both_folds, return_probabilities=True)
    _, pr = predict_case(ct, [run_a, run_b], return_probabilities=True)
    np.testing.assert_allclose(pf.array.astype(np.float32), pr.array.astype(np.float32), atol=2e-3)
    assert not np.allclose(pa.array.astype(np.float32), pf.array.astype(np.float32), atol=1e-2)
    same = predict_case(ct, [run_a, run_a])
    np.testing.assert_array_equal(same.array, predict_case(ct, run_a).array)


def test_tta_changes_nothing_for_a_mirror_symmetric_model_and_runs():
    recipe = recipe_from_yaml(GEOMETRY_RECIPE)
    run = LoadedRun(recipe, KITS19, None, untrained_models(recipe))
    ct = _synthetic_ct()
    plain, tta = predict_case(ct, run), predict_case(ct, run, tta=True)
    assert plain.shape == tta.shape  # both run; TTA averages 2 mirrorings (training flips axis x only)


def test_whole_volume_mode_falls_back_to_windows_for_huge_volumes(monkeypatch):
    from kitseg.inference import CaseTimings, modes

    recipe = recipe_from_yaml(GEOMETRY_RECIPE.replace("inference: {overlap: 0.25}", "inference: {mode: whole}"))
    run = LoadedRun(recipe, KITS19, None, untrained_models(recipe))
    ct = _synthetic_ct((40, 120, 120), spacing=(8.0, 8.0, 8.0))  # 20 x 60 x 60 voxels at 16 mm
    t = CaseTimings()
    predict_case(ct, run, timings=t)
    assert t.windows["localize"] == 1
    monkeypatch.setattr(modes, "WHOLE_MAX_VOXELS", 1000)
    t = CaseTimings()
    predict_case(ct, run, timings=t)
    assert t.windows["localize"] > 1


def test_whole_volume_mode_pads_a_small_volume_to_the_training_patch():
    seen = []

    def predictor(x):
        seen.append(tuple(x.shape[2:]))
        return torch.softmax(torch.stack([-x[:, 0], x[:, 0]], 1), 1)

    image = torch.randn(1, 6, 20, 40)
    out = whole(image, predictor, divisor=(4, 8, 8), min_size=(16, 16, 64))
    assert seen == [(16, 24, 64)]  # z and x padded up to the patch, y to the divisor only
    assert out.shape == (2, 6, 20, 40)
    np.testing.assert_allclose(out[1].numpy(), torch.sigmoid(2 * image[0]).numpy(), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# A trained tiny cascade segments a held-out synthetic case
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    data = make_kits_dataset(tmp / "data", n=4, shape=(16, 32, 32))
    raw = apply_overrides(yaml.safe_load(TINY_RECIPE), {
        f"stages.{s}.{k}": v for s in ("localize", "segment")
        for k, v in (("epochs", 4), ("iterations_per_epoch", 8))})
    train_recipe(validate_recipe(raw), data, tmp / "run", folds=0,
                 options=TrainOptions(seed=0, progress=False, amp=False))
    return load_run(tmp / "run")


def test_trained_tiny_cascade_segments_a_held_out_case(trained_run):
    img, lab = make_case((16, 32, 32), seed=99)  # not one of the training cases (seeds 0-3)
    ct = Volume.from_geometry(img, spacing=(3.0, 1.5, 1.5))
    pred = predict_case(ct, trained_run)
    p, g = pred.array > 0, lab > 0
    dice = 2 * (p & g).sum() / (p.sum() + g.sum())
    assert dice > 0.8, f"kidney Dice {dice:.3f}"
    assert read_volume(ct).same_geometry(pred)
