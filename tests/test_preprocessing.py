"""Resampling, crop/paste and intensity schemes (kitseg.preprocessing) on small numpy volumes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from conftest import kits19_label, shared_path
from kitseg.errors import KitsegError
from kitseg.io import from_sitk, read_label, read_volume, to_sitk
from kitseg.preprocessing.crop import bbox_from_mask, crop, kidney_boxes
from kitseg.preprocessing.intensity import median_denoise, normalize, stats_for
from kitseg.preprocessing.records import HIST_BINS, HIST_LOW, CropRecord, IntensityStats, ResampleRecord
from kitseg.preprocessing.resample import resample, resample_array
from kitseg.preprocessing.spec import PRESETS, IntensitySpec, PreprocessSpec
from kitseg.stages.grid import paste, restore, restore_argmax
from kitseg.volume import Volume

OBLIQUE = np.array([[0.0, 0.6, 0.8], [0.0, 0.8, -0.6], [1.0, 0.0, 0.0]])  # orthonormal columns


def _vol(rng, shape=(12, 18, 16), spacing=(2.5, 0.8, 0.9), direction=None, dtype=np.float32) -> Volume:
    arr = rng.normal(size=shape).astype(dtype)
    return Volume.from_geometry(arr, spacing=spacing, origin=(10.0, -5.0, 3.0), direction=direction)


def _corners(affine, shape) -> np.ndarray:
    """World positions of the outer corners of the voxel grid (index -0.5 and n - 0.5)."""
    lo, hi = -0.5 * np.ones(3), np.asarray(shape) - 0.5
    pts = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    return pts @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


# ---------------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [(1.0, None, None), (5.0, 1.6, 0.45), (0.7, 0.7, 0.7)])
def test_resample_keeps_the_physical_box(rng, target):
    vol = _vol(rng, direction=OBLIQUE)
    out, rec = resample(vol, spacing=target)
    assert np.allclose(_corners(out.affine, out.shape), _corners(vol.affine, vol.shape), atol=1e-9)
    assert np.allclose(out.direction, vol.direction)
    for axis, t in enumerate(target):  # nnU-Net's shape rule, spacing within half a voxel of the target
        assert out.shape[axis] == (vol.shape[axis] if t is None else round(vol.shape[axis] * vol.spacing[axis] / t))
        if t is not None:
            assert abs(out.spacing[axis] - t) <= 0.5 * out.spacing[axis] / out.shape[axis] * vol.shape[axis]
    assert rec.original_shape == vol.shape and np.allclose(rec.original_affine, vol.affine)


@pytest.mark.parametrize("shape", [(5, 18, 16), (29, 7, 40), (12, 37, 9)])
def test_linear_matches_simpleitk(rng, shape):
    vol = _vol(rng, direction=OBLIQUE)
    out, _ = resample(vol, shape=shape)
    ref_img = to_sitk(out)
    ref = sitk.Resample(to_sitk(vol), ref_img, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    assert np.abs(sitk.GetArrayFromImage(ref) - out.array).max() < 1e-4


def test_nearest_matches_simpleitk_and_keeps_dtype(rng):
    lab = Volume.from_geometry(rng.integers(0, 3, size=(10, 15, 14)).astype(np.uint8), spacing=(3.0, 0.7, 0.8))
    # (no exact ties: at a tie we round up in exact integer arithmetic, ITK either way by float rounding)
    out, _ = resample(lab, shape=(8, 31, 8), order="nearest")
    ref = sitk.Resample(to_sitk(lab), to_sitk(out), sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    assert out.array.dtype == np.uint8
    assert np.array_equal(sitk.GetArrayFromImage(ref), out.array)


@pytest.mark.parametrize("order", ["nearest", "linear_per_label"])
@pytest.mark.parametrize("shape", [(5, 9, 9), (30, 50, 23), (17, 20, 20)])
def test_label_resampling_never_invents_labels(rng, order, shape):
    base = np.zeros((12, 20, 20), np.uint8)
    base[2:9, 3:12, 4:15] = 3
    base[4:7, 5:9, 6:11] = 7  # values 0, 3, 7: a blend would give 1, 2, 4, 5 ...
    base[rng.random(base.shape) < 0.05] = 3
    lab = Volume.from_geometry(base, spacing=(2.0, 1.0, 1.0))
    out, _ = resample(lab, shape=shape, order=order)
    assert set(np.unique(out.array)) <= {0, 3, 7}
    assert out.array.dtype == np.uint8


def test_linear_per_label_is_argmax_of_linear_one_hot(rng):
    base = rng.integers(0, 3, size=(8, 12, 12)).astype(np.uint8)
    lab = Volume.from_geometry(base, spacing=(1.0, 1.0, 1.0))
    out, _ = resample(lab, shape=(11, 7, 17), order="linear_per_label")
    probs = np.stack([resample_array((base == c).astype(np.float32), (11, 7, 17)) for c in range(3)])
    top = np.sort(probs, 0)
    clear = top[-1] - top[-2] > 1e-5  # ties may go either way
    assert np.array_equal(out.array[clear], probs.argmax(0)[clear])


def test_restore_gives_the_original_grid_exactly(rng):
    vol = _vol(rng, shape=(13, 17, 19), direction=OBLIQUE)
    for target in [(1.1, None, None), (4.0, 2.0, 2.0), (0.9, 0.5, 0.45)]:
        out, rec = resample(vol, spacing=target)
        back = restore(out, rec)
        assert back.shape == vol.shape and np.array_equal(back.affine, vol.affine)
        assert back.same_geometry(vol)


def test_nearest_up_then_down_is_identity(rng):
    lab = Volume.from_geometry(rng.integers(0, 3, size=(6, 10, 9)).astype(np.uint8), spacing=(3.0, 1.0, 1.0))
    up, rec = resample(lab, shape=(18, 20, 27), order="nearest")
    assert np.array_equal(restore(up, rec, order="nearest").array, lab.array)


def test_linear_reproduces_a_ramp_inside_the_grid():
    z = np.arange(20, dtype=np.float32)[:, None, None] * np.ones((1, 6, 5), np.float32)
    vol = Volume.from_geometry(z * 2.0 + 1.0, spacing=(1.0, 1.0, 1.0))
    out, rec = resample(vol, shape=(47, 6, 5))
    centres = (np.arange(47) + 0.5) * 20 / 47 - 0.5  # old indices sampled (field-of-view convention)
    inside = (centres >= 0) & (centres <= 19)
    assert np.allclose(out.array[inside, 0, 0], 2.0 * centres[inside] + 1.0, atol=1e-4)
    back = restore(out, rec).array
    assert np.allclose(back[1:-1], vol.array[1:-1], atol=1e-4)


def test_cubic_along_z_matches_torch_bicubic(rng):
    arr = rng.normal(size=(9, 5, 6)).astype(np.float32)
    ours = resample_array(arr, (21, 5, 6), "cubic")
    as_2d = torch.from_numpy(arr.reshape(9, 30))[None, None]  # z as the height of a 2D image, width unchanged
    ref = F.interpolate(as_2d, size=(21, 30), mode="bicubic", align_corners=False)[0, 0].numpy().reshape(21, 5, 6)
    assert np.abs(ours - ref).max() < 1e-5


def test_anisotropic_data_use_linear_along_z(rng):
    arr = rng.normal(size=(8, 12, 12)).astype(np.float32)
    aniso = Volume.from_geometry(arr, spacing=(5.0, 0.8, 0.8))
    cubic, rec = resample(aniso, shape=(20, 12, 12), order="cubic")
    assert rec.anisotropic
    assert np.allclose(cubic.array, resample_array(arr, (20, 12, 12), "linear"), atol=1e-6)
    iso = Volume.from_geometry(arr, spacing=(1.0, 0.8, 0.8))
    cubic_iso, rec_iso = resample(iso, shape=(20, 12, 12), order="cubic")
    assert not rec_iso.anisotropic
    assert not np.allclose(cubic_iso.array, resample_array(arr, (20, 12, 12), "linear"), atol=1e-3)


def test_probabilities_restore_per_channel_and_argmax(rng):
    vol = _vol(rng, shape=(10, 12, 14))
    _, rec = resample(vol, shape=(6, 9, 20))
    logits = rng.normal(size=(3, 6, 9, 20)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    full = restore(probs, rec)
    assert full.shape == (3, 10, 12, 14) and full.dtype == np.float32
    for c in range(3):
        assert np.allclose(full[c], restore(probs[c], rec).array)
    labels = restore_argmax(probs, rec, values=[0, 1, 2])
    top = np.sort(full, 0)
    clear = top[-1] - top[-2] > 1e-5
    assert labels.dtype == np.uint8 and np.array_equal(labels[clear], full.argmax(0)[clear])
    assert restore(probs, rec, dtype=np.float16).dtype == np.float16


def test_padding_is_centred_and_restored(rng):
    vol = _vol(rng, shape=(10, 12, 14))
    out, rec = resample(vol, shape=(5, 6, 7), pad_to=(8, 9, 7), pad_value=-3.0)
    assert out.shape == (8, 9, 7) and rec.pad == ((1, 2), (1, 2), (0, 0))
    assert np.all(out.array[0] == -3.0) and np.all(out.array[-2:] == -3.0)
    inner = out.array[1:6, 1:7]
    assert np.allclose(inner, resample_array(vol.array, (5, 6, 7)))
    assert np.allclose(out.index_to_world((1, 1, 0)), np.array(rec.affine)[:3, 3])  # the inner grid is in place
    back = restore(out, rec)
    assert back.shape == vol.shape and np.array_equal(back.affine, vol.affine)
    assert np.allclose(back.array, restore(inner, rec).array)  # padded or unpadded input alike


def test_resample_refuses_bad_requests(rng):
    vol = _vol(rng)
    with pytest.raises(KitsegError):
        resample(vol, spacing=(1, 1, 1), shape=(2, 2, 2))
    with pytest.raises(KitsegError):
        resample(vol, shape=(3, 3, 3), order="quadratic")
    with pytest.raises(KitsegError):
        resample(vol, shape=(3, 3, 3), pad_to=(2, 3, 3))
    _, rec = resample(vol, shape=(3, 3, 3))
    with pytest.raises(KitsegError):
        restore(np.zeros((4, 3, 3)), rec)


def test_records_round_trip_json(rng):
    vol = _vol(rng)
    _, rrec = resample(vol, shape=(4, 5, 6), pad_to=(6, 5, 6))
    _, crec = crop(vol, (slice(1, 5), slice(0, 9), slice(3, 4)))
    assert ResampleRecord.model_validate_json(rrec.model_dump_json()) == rrec
    assert CropRecord.model_validate_json(crec.model_dump_json()) == crec
    with pytest.raises(ValueError):
        CropRecord.model_validate({**crec.model_dump(), "extra": 1})


# ---------------------------------------------------------------------------------------------
# Crop and paste
# ---------------------------------------------------------------------------------------------
def test_bbox_from_mask_margin_clip_min_shape_and_empty():
    mask = np.zeros((20, 30, 40), bool)
    mask[5:8, 10:21, 2:5] = True
    # margin 3 mm: ceil(3 / 2.0) = 2 slices, ceil(3 / 0.8) = 4 rows, ceil(3 / 1.0) = 3 columns (clipped at 0)
    assert bbox_from_mask(mask, (2.0, 0.8, 1.0), 3.0) == (slice(3, 10), slice(6, 25), slice(0, 8))
    assert bbox_from_mask(mask, (2.0, 0.8, 1.0), (0, 0, 0)) == (slice(5, 8), slice(10, 21), slice(2, 5))
    grown = bbox_from_mask(mask, (1, 1, 1), 0, min_shape=(1, 15, 10))
    assert grown == (slice(5, 8), slice(8, 23), slice(0, 10))  # grown symmetrically, shifted inside at x = 0
    assert bbox_from_mask(mask, (1, 1, 1), 0, min_shape=(50, 1, 1))[0] == slice(0, 20)
    assert bbox_from_mask(np.zeros((4, 5, 6)), (1, 1, 1), 2) == (slice(0, 4), slice(0, 5), slice(0, 6))
    with pytest.raises(KitsegError):
        bbox_from_mask(np.zeros((4, 5, 6)), (1, 1, 1), if_empty="error")


def test_crop_paste_round_trip_and_geometry(rng):
    vol = _vol(rng, shape=(10, 20, 30), direction=OBLIQUE)
    box = (slice(2, 7), slice(5, 20), slice(0, 11))
    sub, rec = crop(vol, box)
    assert sub.shape == (5, 15, 11) and rec.shape == (5, 15, 11)
    assert np.allclose(sub.index_to_world((0, 0, 0)), vol.index_to_world((2, 5, 0)))
    assert np.allclose(sub.index_to_world((4, 14, 10)), vol.index_to_world((6, 19, 10)))
    full = paste(sub.array, rec, fill=-7)
    assert full.shape == vol.shape and np.array_equal(full[box], vol.array[box])
    outside = np.ones(vol.shape, bool)
    outside[box] = False
    assert np.all(full[outside] == -7)
    probs = np.stack([sub.array, -sub.array])  # (C, z, y, x)
    pasted = paste(probs, rec)
    assert pasted.shape == (2, *vol.shape) and np.array_equal(pasted[1][box], -vol.array[box])
    with pytest.raises(KitsegError):
        paste(np.zeros((5, 15, 10)), rec)
    with pytest.raises(KitsegError):
        crop(vol, (slice(0, 0), slice(None), slice(None)))


def test_kidney_boxes_each_and_with_tumor():
    lab = np.zeros((10, 20, 40), np.uint8)
    lab[2:6, 5:10, 3:8] = 1  # right kidney (low x)
    lab[3:8, 6:12, 28:36] = 1  # left kidney
    lab[4:6, 7:9, 30:32] = 2  # tumor in the left kidney
    both = kidney_boxes(lab, (1, 1, 1), 0)
    assert both == [(slice(2, 8), slice(5, 12), slice(3, 36))]
    each = sorted(kidney_boxes(lab, (1, 1, 1), 1, kidneys="each"), key=lambda b: b[2].start)
    assert each == [(slice(1, 7), slice(4, 11), slice(2, 9)), (slice(2, 9), slice(5, 13), slice(27, 37))]
    assert kidney_boxes(lab, (1, 1, 1), 0, kidneys="with_tumor") == [(slice(3, 8), slice(6, 12), slice(28, 36))]
    z_only = kidney_boxes(lab, (1, 1, 1), 0, axes="z")
    assert z_only == [(slice(2, 8), slice(0, 20), slice(0, 40))]


@pytest.mark.parametrize("in_plane_mm", [0.74, 3.0])
def test_fcn_ppm_roi_holds_one_kidney_on_fine_and_coarse_grids(in_plane_mm):
    """The FCN's ROI is 150 pixels of the paper's 0.74 mm CT (111 mm) on every grid: at 0.74 mm at
    least 150 pixels, and on a coarse 128-pixel slice (the benchmark's phantoms) still one kidney per
    box, where 150 pixels would span the slice and hold both."""
    from kitseg.recipes import load_recipe
    for variant in (None, "lesioned_kidney_only"):
        roi = load_recipe("fcn_ppm", variant=variant).stage("fcn").preprocess.roi
        spacing = (3.0, in_plane_mm, in_plane_mm)
        n = int(round(400 / in_plane_mm))  # a 40 cm field of view
        lab = np.zeros((20, n, n), np.uint8)
        yy, xx = np.ogrid[:n, :n]
        for cx_mm in (130.0, 270.0):  # kidney centres 14 cm apart, 6 cm wide, 10 cm deep
            cy, cx = 230 / in_plane_mm, cx_mm / in_plane_mm
            inside = ((yy - cy) * in_plane_mm / 50) ** 2 + ((xx - cx) * in_plane_mm / 30) ** 2 <= 1
            lab[5:15][:, inside] = 1
        boxes = kidney_boxes(lab, spacing, roi.margin_mm, kidneys=roi.kidneys, min_shape=roi.min_voxels(spacing))
        assert len(boxes) == (2 if variant is None else 1)
        for box in boxes:
            sides = {int(x >= n // 2) for x in np.nonzero(lab[box].any(axis=(0, 1)))[0] + box[2].start}
            assert len(sides) == 1  # one kidney's voxels only
            assert box[1].stop - box[1].start >= min(n, 111 / in_plane_mm)
            if in_plane_mm == 0.74:
                assert box[2].stop - box[2].start >= 150


# ---------------------------------------------------------------------------------------------
# Intensity schemes, each against a hand computation
# ---------------------------------------------------------------------------------------------
X = np.array([-1000.0, -250.0, -100.0, 0.0, 50.0, 300.0, 600.0, 2000.0], np.float32).reshape(2, 2, 2)
STATS = IntensityStats(n_voxels=8, mean=100.0, std=50.0, min=-1000, max=2000, p00_05=-900.0, p00_5=-200.0,
                       p99_5=500.0, p99_95=1500.0)


def test_percentile_zscore_and_nnunet_ct_by_hand():
    zhang = normalize(X, IntensitySpec(scheme="percentile_zscore"), STATS)  # clip [-900, 500]
    expect = np.array([-900, -250, -100, 0, 50, 300, 500, 500], float).reshape(2, 2, 2)
    assert zhang.dtype == np.float32 and np.allclose(zhang, (expect - 100) / 50)
    nnu = normalize(X, IntensitySpec(scheme="nnunet_ct"), STATS)  # clip [-200, 500]
    expect = np.array([-200, -200, -100, 0, 50, 300, 500, 500], float).reshape(2, 2, 2)
    assert np.allclose(nnu, (expect - 100) / 50)
    wide = normalize(X, IntensitySpec(scheme="percentile_zscore", clip_percentiles=(0.5, 99.95)), STATS)
    assert np.allclose(wide.ravel(), (np.array([-200, -200, -100, 0, 50, 300, 600, 1500]) - 100) / 50)
    assert np.array_equal(X.ravel()[0], -1000.0)  # the input is untouched


def test_percentile_zscore_clips_at_the_case_own_percentiles_with_clip_case():
    """Zhang et al. 2.3: "for each data case" clip to its own 0.05 / 99.5 percentiles, z-score with
    the dataset's mean and std; ``clip: dataset`` clips at the fingerprint's percentiles."""
    x = np.arange(2000, dtype=np.float32).reshape(2, 10, 100) - 500  # -500 .. 1499
    stats = STATS.model_copy(update={"mean": 100.0, "std": 50.0})
    case = normalize(x, IntensitySpec(scheme="percentile_zscore", clip="case"), stats)
    lo, hi = np.percentile(x, [0.05, 99.5])
    assert np.allclose(case, (np.clip(x, lo, hi) - 100.0) / 50.0)
    dataset = normalize(x, IntensitySpec(scheme="percentile_zscore"), stats)
    assert np.allclose(dataset, (np.clip(x, stats.p00_05, stats.p99_5) - 100.0) / 50.0)
    assert not np.allclose(case, dataset)
    with pytest.raises(ValueError):
        IntensitySpec(scheme="window", window=(-200, 500), clip="case")


def test_window_schemes_by_hand():
    fcn = normalize(X, IntensitySpec(scheme="window", window=(-200, 500)))
    assert np.allclose(fcn.ravel(), np.array([0, 0, 100, 200, 250, 500, 700, 700]) / 700)
    hist = np.zeros(HIST_BINS, np.int64)
    np.add.at(hist, np.array([0, 100, 700]) - 200 - HIST_LOW, 1)  # values 0 / 100 / 700 HU... shifted by -200
    stats = STATS.model_copy(update={"histogram": hist.tolist()})
    assert stats.window_mean(-200, 500) == pytest.approx((0 + 100 / 700 + 1.0) / 3)  # -200 -> 0, -100, 500 -> 1
    fcn_mean = normalize(X, IntensitySpec(scheme="window", window=(-200, 500), subtract_dataset_mean=True), stats)
    assert np.allclose(fcn_mean, fcn - (1 + 100 / 700) / 3)
    mlperf = normalize(X, PRESETS["mlperf"].intensity)
    expect = (np.clip(np.array([-1000, -250, -100, 0, 50, 300, 600, 2000.0]), -79, 304) - 101.0) / 76.9
    assert np.allclose(mlperf.ravel(), expect, atol=1e-6)


def test_volume_zscore_and_kidney_window_by_hand():
    x = np.array([1.0, 2.0, 3.0, 6.0], np.float32).reshape(1, 2, 2)  # mean 3, variance (4 + 1 + 0 + 9) / 4
    out = normalize(x, IntensitySpec(scheme="volume_zscore"))
    assert np.allclose(out.ravel(), (np.array([1, 2, 3, 6]) - 3) / np.sqrt(3.5))
    assert np.allclose(normalize(np.full((2, 2, 2), 5.0), IntensitySpec(scheme="volume_zscore")), 0)
    mask = np.array([[[True, False], [True, True]], [[False, False], [True, True]]])
    kid = normalize(X, PRESETS["vnet25d"].intensity, roi_mask=mask)  # window (-160, 240), 0 outside the mask
    expect = np.array([0, 0, 60, 160, 0, 0, 400, 400]) / 400 * mask.ravel()
    assert np.allclose(kid.ravel(), expect)
    with pytest.raises(KitsegError):
        normalize(X, PRESETS["vnet25d"].intensity)
    assert np.array_equal(normalize(X, IntensitySpec(scheme="none")), X)


def test_schemes_that_need_statistics_say_so():
    with pytest.raises(KitsegError):
        normalize(X, IntensitySpec(scheme="nnunet_ct"))
    with pytest.raises(KitsegError):
        stats_for(None, IntensitySpec(scheme="percentile_zscore", scope="roi"))
    assert stats_for(None, IntensitySpec(scheme="volume_zscore")) is None
    with pytest.raises(ValueError):
        IntensitySpec(scheme="window")  # no window
    with pytest.raises(ValueError):
        IntensitySpec(clip_percentiles=(1.0, 99.0))  # not stored by the fingerprint


def test_median_denoise(rng):
    x = np.zeros((5, 5, 5), np.float32)
    x[2, 2, 2] = 100.0  # an isolated spike vanishes
    assert np.all(median_denoise(x) == 0)
    big = rng.normal(size=(70, 9, 8)).astype(np.float32)  # more slices than one slab
    assert np.array_equal(median_denoise(big), ndimage.median_filter(big, size=3, mode="nearest"))


def test_preprocess_spec_validation():
    with pytest.raises(ValueError):
        PreprocessSpec(target_spacing=[1, 1, 1], slice_spacing=2.0)
    with pytest.raises(ValueError):
        PreprocessSpec(pad_to_shape=True)
    with pytest.raises(ValueError):
        PreprocessSpec(target_spacing=[1, 1])
    with pytest.raises(ValueError):
        PreprocessSpec(bogus=1)
    assert PreprocessSpec(slice_spacing=2.0, in_plane_shape=[256, 256]).resamples
    assert not PRESETS["fcn_ppm"].resamples and PRESETS["zhang_stage2"].resamples
    for name, spec in PRESETS.items():
        assert PreprocessSpec.model_validate_json(spec.model_dump_json()) == spec, name


# ---------------------------------------------------------------------------------------------
# Real data from ../shared (skipped when absent)
# ---------------------------------------------------------------------------------------------
def test_real_ct_resampling_agrees_with_simpleitk():
    ct = read_volume(shared_path("data", "real_ct", "example_ct_sm.nii.gz"))
    out, rec = resample(ct, spacing=(1.6, 1.2, 1.2))
    ref = sitk.Resample(to_sitk(ct), to_sitk(out), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    assert np.abs(from_sitk(ref).array - out.array).max() < 1e-2  # HU, float32 rounding
    back = restore(out, rec)
    assert back.same_geometry(ct)


def test_real_kits19_label_round_trip():
    lab = read_label(kits19_label(61))  # 29 x 512 x 512 at 5 x 0.98 x 0.98 mm: anisotropic
    for order in ("nearest", "linear_per_label"):
        out, rec = resample(lab, spacing=(1.6, 1.2, 1.2), order=order)
        assert rec.anisotropic and set(np.unique(out.array)) <= {0, 1, 2}
        for value in (1, 2):  # the label volumes survive within a few percent
            before = (lab.array == value).sum() * lab.voxel_volume_ml
            after = (out.array == value).sum() * out.voxel_volume_ml
            assert after == pytest.approx(before, rel=0.05)
        back = restore(out, rec, order="nearest")
        assert back.same_geometry(lab) and set(np.unique(back.array)) <= {0, 1, 2}
        dice = 2 * ((back.array > 0) & (lab.array > 0)).sum() / ((back.array > 0).sum() + (lab.array > 0).sum())
        assert dice > 0.95
