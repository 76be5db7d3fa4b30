"""Training inputs: where patches and slices are drawn (samplers) and how they are cut and augmented."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kitseg.errors import KitsegError
from kitseg.recipes.schema import AugmentSpec, SamplerSpec
from kitseg.stages.targets import make_target
from kitseg.training import augment as aug
from kitseg.training.sampling import Draw, Geometry, Sampler, make_sample, make_train_case
from synthetic_kits import make_case
from test_training import KITS, LOCALIZE, _tiny_recipe_obj


# ---- sampling ----------------------------------------------------------------------------------
def _case_with_small_fg(shape=(40, 40, 40)):
    img = np.zeros(shape, np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[30:32, 5:7, 20:22] = 1
    lab[31, 6, 21] = 2
    return make_train_case("c", img, lab, (1.0, 1.0, 1.0), KITS)


def test_patch_sampler_foreground_fraction():
    case = _case_with_small_fg()
    geometry = Geometry("patch", 3, (8, 8, 8))
    sampler = Sampler([case], SamplerSpec(foreground_fraction=0.33), geometry, AugmentSpec(), seed=0)
    draws = sampler.draw(3000)
    frac = np.mean([d.fg for d in draws])
    assert abs(frac - 0.33) < 0.04
    stage = _tiny_recipe_obj().stage("localize")
    stage = stage.model_copy(update={"target": KITS})
    with_fg = [make_sample(case, d, geometry, stage, {})[1].any() for d in draws[:300]]
    forced = [d.fg for d in draws[:300]]
    assert all(w for w, f in zip(with_fg, forced) if f)  # every foreground draw holds foreground
    assert np.mean(with_fg) < 0.45  # random patches rarely hit the small object
    # the foreground class is drawn first: the one tumor voxel is the centre of half the foreground draws
    fg = [d for d in draws if d.fg]
    assert abs(np.mean([tuple(d.center) == (31, 6, 21) for d in fg]) - 0.5) < 0.07


def test_patch_sampler_class_weights_favour_the_tumor():
    """class_weights {tumor: 3}: the one tumor voxel centres 3/4 of the foreground draws instead of 1/2; a class
    the target does not have is named in one line."""
    case = _case_with_small_fg()
    geometry = Geometry("patch", 3, (8, 8, 8))
    spec = SamplerSpec(foreground_fraction=1.0, class_weights={"tumor": 3.0})
    sampler = Sampler([case], spec, geometry, AugmentSpec(), seed=0, classes=list(KITS.classes))
    on_tumor = np.mean([tuple(d.center) == (31, 6, 21) for d in sampler.draw(2000)])
    assert abs(on_tumor - 0.75) < 0.04
    with pytest.raises(KitsegError, match="cyst"):
        Sampler([case], SamplerSpec(class_weights={"cyst": 2.0}), geometry, AugmentSpec(), seed=0,
                classes=list(KITS.classes))
    with pytest.raises(ValueError, match="> 0"):
        SamplerSpec(class_weights={"tumor": 0.0})


def test_slice_sampler_oversamples_kidney_slices():
    """ResUNet paper 2.2: slices with kidney expanded 50 times: 5 of 100 slices -> 250/345 of draws."""
    img = np.zeros((100, 16, 16), np.float32)
    lab = np.zeros((100, 16, 16), np.uint8)
    lab[40:45, 4:8, 4:8] = 1
    case = make_train_case("c", img, lab, (1.0, 1.0, 1.0), LOCALIZE)
    sampler = Sampler([case], SamplerSpec(name="slices", kidney_slice_oversampling=50), Geometry("slices", 2, (16, 16),
                      slices=3), AugmentSpec(), seed=1)
    frac = np.mean([d.fg for d in sampler.draw(2000)])
    assert abs(frac - 250 / 345) < 0.04
    # 3D slice windows of 8 slices always lie inside the volume
    s3 = Sampler([case], SamplerSpec(name="slices", kidney_slice_oversampling=50), Geometry("slices", 3, (8, 16, 16)),
                 AugmentSpec(), seed=1)
    starts = [d.center[0] - 4 for d in s3.draw(200)]
    assert min(starts) >= 0 and max(starts) <= 92


def test_hard_case_weights_and_sampler_state_roundtrip(tmp_path):
    cases = [_case_with_small_fg() for _ in range(4)]
    spec = SamplerSpec(hard_case=True)
    sampler = Sampler(cases, spec, Geometry("patch", 3, (8, 8, 8)), AugmentSpec(rotate_deg=5, probability=1), seed=0)
    assert np.allclose(sampler.case_weights(), 0.25)
    sampler.update_hardness([0, 1, 2, 3], [5.0, 1.0, 1.0, 1.0], [0.5, 0.0, 0.0, 0.0])
    w = sampler.case_weights()
    assert w.sum() == pytest.approx(1.0) and w[0] >= 0.45 and w[1] == pytest.approx(w[3])
    counts = np.bincount([d.case for d in sampler.draw(400)], minlength=4)
    assert counts[0] > 2 * counts[1]
    path = tmp_path / "s.pt"
    torch.save(sampler.state_dict(), path)
    expected = sampler.draw(5)
    other = Sampler(cases, spec, Geometry("patch", 3, (8, 8, 8)), AugmentSpec(rotate_deg=5, probability=1), seed=9)
    other.load_state_dict(torch.load(path, weights_only=True))
    assert other.draw(5) == expected


# ---- augmentation ------------------------------------------------------------------------------
def test_augment_params_seeded_and_stream_independent():
    a = aug.sample_params(AugmentSpec(rotate_deg=10, flip_axes=[2], probability=0.5), np.random.default_rng(5))
    b = aug.sample_params(AugmentSpec(rotate_deg=10, flip_axes=[2], probability=0.5), np.random.default_rng(5))
    assert a == b
    r1, r2 = np.random.default_rng(1), np.random.default_rng(1)
    aug.sample_params(AugmentSpec(), r1)
    aug.sample_params(AugmentSpec(rotate_deg=10, scale=(0.8, 1.2), gaussian_blur=1, probability=1), r2)
    assert r1.random() == r2.random()  # same number of draws whatever is applied


def test_spatial_transform_geometry():
    rng = np.random.default_rng(0)
    box = rng.normal(size=(6, 9, 9)).astype(np.float32)
    lab = (box > 0).astype(np.uint8)
    # a 90-degree in-plane rotation about z is a rot90 of every slice
    m = aug._rotation((90.0, 0.0, 0.0)).T
    p = aug.AugParams(matrix=tuple(tuple(r) for r in m))
    ct, lb = aug.apply_spatial(box, lab, p, (6, 9, 9))
    assert np.allclose(ct, np.rot90(box, k=1, axes=(1, 2)), atol=1e-4) or \
        np.allclose(ct, np.rot90(box, k=-1, axes=(1, 2)), atol=1e-4)
    assert set(np.unique(lb)) <= {0, 1} and np.array_equal(lb, (ct > 0).astype(np.uint8))
    # the identity matrix through grid_sample gives the centre of the box back
    ident = aug.AugParams(matrix=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    ct, _ = aug.apply_spatial(box, lab, ident, (4, 5, 5))
    assert np.allclose(ct, box[1:5, 2:7, 2:7], atol=1e-5)
    # a rotated patch needs a larger box, sharing its centre (same parity)
    small = aug.sample_params(AugmentSpec(rotate_deg=30, probability=1), np.random.default_rng(2))
    size = aug.box_size(small, (8, 16, 16))
    assert all(s >= p and (s - p) % 2 == 0 for s, p in zip(size, (8, 16, 16))) and size != (8, 16, 16)


def test_prior_degradation_coarsens_and_moves_the_edge_like_a_stage_1_mask():
    mask = np.zeros((20, 40, 40), np.float32)
    mask[4:15, 9:31, 11:28] = 1
    spacing = (2.0, 1.0, 1.0)
    assert aug.degrade_prior(mask, aug.NONE, spacing) is mask  # not drawn: untouched
    coarse = aug.degrade_prior(mask, aug.AugParams(prior_block=(2, 4, 4), prior_phase=(1, 2, 3)), spacing)
    assert coarse.dtype == np.float32 and coarse.shape == mask.shape and set(np.unique(coarse)) == {0.0, 1.0}
    # constant on every block of the shifted 2 x 4 x 4 grid, and still about the same object
    blocks = np.pad(coarse, ((1, 1), (2, 2), (3, 1))).reshape(11, 2, 11, 4, 11, 4)
    assert (blocks.min(axis=(1, 3, 5)) == blocks.max(axis=(1, 3, 5))).all()
    assert not np.array_equal(coarse, mask) and abs(coarse.sum() - mask.sum()) < 0.3 * mask.sum()
    grown = aug.degrade_prior(mask, aug.AugParams(prior_block=(1, 1, 1), prior_radius_mm=3.0), spacing)
    shrunk = aug.degrade_prior(mask, aug.AugParams(prior_block=(1, 1, 1), prior_radius_mm=-3.0), spacing)
    assert (grown >= mask).all() and (shrunk <= mask).all()
    # 3 mm is 1 slice (2 mm) and 3 rows/columns (1 mm): the box grows by that on each side
    zs, ys, xs = (np.flatnonzero(grown.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    assert (zs[0], zs[-1], ys[0], ys[-1], xs[0], xs[-1]) == (3, 15, 6, 33, 8, 30)
    assert shrunk.sum() == (11 - 2) * (22 - 6) * (17 - 6)
    # drawn with its probability, and only priors are touched: the CT channel and the target are not
    spec = AugmentSpec(prior_degrade=0.5, prior_coarse_mm=4.0, prior_morph_mm=3.0)
    draws = [aug.sample_params(spec, np.random.default_rng(i), 3, (4.0, 1.0, 1.0)) for i in range(200)]
    picked = [d for d in draws if d.prior_block is not None]
    assert 70 < len(picked) < 130 and all(d.prior_block == (1, 4, 4) for d in picked)
    assert all(abs(d.prior_radius_mm) <= 3.0 for d in picked)
    img, lab = make_case((16, 32, 32), seed=0)
    case = make_train_case("c", img, lab, (3.0, 1.5, 1.5), KITS)
    stage = _tiny_recipe_obj().stage("segment")
    g3 = Geometry("patch", 3, (8, 16, 16))
    plain_x, plain_y = make_sample(case, Draw(0, (8, 16, 16)), g3, stage, {"localize": LOCALIZE})
    params = aug.AugParams(prior_block=(1, 4, 4), prior_phase=(0, 1, 2), prior_radius_mm=2.0)
    x, y = make_sample(case, Draw(0, (8, 16, 16), aug=params), g3, stage, {"localize": LOCALIZE})
    assert np.array_equal(x[0], plain_x[0]) and np.array_equal(y, plain_y)
    assert not np.array_equal(x[1], plain_x[1])


def test_make_sample_flips_and_25d_channel_order():
    img, lab = make_case((16, 32, 32), seed=0)
    case = make_train_case("c", img, lab, (3.0, 1.5, 1.5), KITS)
    stage = _tiny_recipe_obj().stage("segment")
    targets = {"localize": LOCALIZE}
    g3 = Geometry("patch", 3, (8, 16, 16))
    d = Draw(0, (8, 16, 16))
    x, y = make_sample(case, d, g3, stage, targets)
    assert x.shape == (2, 8, 16, 16) and np.array_equal(x[0], img[4:12, 8:24, 8:24])
    assert np.array_equal(y, make_target(lab[4:12, 8:24, 8:24], KITS))
    xf, yf = make_sample(case, Draw(0, (8, 16, 16), aug=aug.AugParams(flips=(2,))), g3, stage, targets)
    assert np.array_equal(xf, x[..., ::-1]) and np.array_equal(yf, y[..., ::-1])
    # 2.5D: 3 slices x 2 inputs, slice-major (channel s * 2 + c), target = centre slice
    g2 = Geometry("slices", 2, (16, 16), slices=3)
    x2, y2 = make_sample(case, Draw(0, (8, 16, 16)), g2, stage, targets)
    assert x2.shape == (6, 16, 16) and y2.shape == (16, 16)
    for s in range(3):
        assert np.array_equal(x2[2 * s], img[7 + s, 8:24, 8:24])
        assert np.array_equal(x2[2 * s + 1], (lab[7 + s, 8:24, 8:24] > 0).astype(np.float32))
    assert np.array_equal(y2, make_target(lab[8, 8:24, 8:24], KITS))
    # patches leaving the volume are padded with the CT background and label 0
    xe, ye = make_sample(case, Draw(0, (0, 0, 0)), g3, stage, targets)
    assert np.all(xe[0, :4] == case.background) and not ye[:4].any()


def test_thin_field_of_view_keeps_a_run_of_slices_and_pads_the_rest_like_inference():
    """A thin-FOV draw keeps thin_fov_mm of slices at a random place and makes the rest what inference pads a
    thin CT with (the CT background, label 0); recipes that do not ask for it keep their random stream."""
    img, lab = make_case((16, 32, 32), seed=0)
    case = make_train_case("c", img, lab, (3.0, 1.5, 1.5), KITS)
    stage = _tiny_recipe_obj().stage("segment")
    g3 = Geometry("patch", 3, (16, 16, 16))
    plain, _ = make_sample(case, Draw(0, (8, 16, 16)), g3, stage, {"localize": LOCALIZE})
    x, y = make_sample(case, Draw(0, (8, 16, 16), aug=aug.AugParams(thin_fov=(15.0, 0.5))), g3, stage,
                       {"localize": LOCALIZE})
    kept = [k for k in range(16) if not np.all(x[0, k] == case.background)]
    assert kept == list(range(6, 11))  # 15 mm of 3 mm slices, starting halfway through its 12 possible places
    assert np.array_equal(x[0, 6:11], plain[0, 6:11]) and not y[..., :6, :, :].any() and not y[..., 11:, :, :].any()
    # drawn with the probability asked for, in the range asked for; 3D only
    spec = AugmentSpec(thin_fov=0.5, thin_fov_mm=(60, 90))
    draws = [aug.sample_params(spec, np.random.default_rng(i), 3, (6.0, 6.0, 6.0)).thin_fov for i in range(200)]
    thin = [d for d in draws if d is not None]
    assert 70 < len(thin) < 130 and all(60 <= mm <= 90 and 0 <= at < 1 for mm, at in thin)
    assert aug.sample_params(spec, np.random.default_rng(0), 2).thin_fov is None
    r1, r2 = np.random.default_rng(1), np.random.default_rng(1)
    aug.sample_params(AugmentSpec(), r1)
    aug.sample_params(AugmentSpec(thin_fov_mm=(30, 40)), r2)
    assert r1.random() == r2.random()


def test_thin_field_of_view_range_is_checked():
    with pytest.raises(ValueError, match="thin_fov_mm"):
        AugmentSpec(thin_fov=0.3, thin_fov_mm=(90, 60))
