"""Post-processing: connected components against scipy, TuNet Algorithm 1 branch by branch, median, CRF."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from kitseg.errors import KitsegError
from kitseg.postprocessing import (
    dense_crf,
    filter_components_multiclass,
    keep_largest_components,
    median_filter3,
    region_grow,
    tumor_inside_kidney,
    tunet_algorithm1,
)

STRUCTURE = {c: ndimage.generate_binary_structure(3, r) for c, r in ((6, 1), (18, 2), (26, 3))}


def _scipy_largest(mask: np.ndarray, n: int, connectivity: int) -> np.ndarray:
    lab, count = ndimage.label(mask, structure=STRUCTURE[connectivity])
    sizes = np.bincount(lab.ravel(), minlength=count + 1)
    order = np.argsort(-sizes[1:], kind="stable") + 1  # ties: first in raster order
    return np.isin(lab, order[:n])


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_keep_largest_matches_scipy_label(rng, connectivity, n):
    mask = ndimage.binary_opening(rng.random((20, 24, 28)) > 0.55) | (rng.random((20, 24, 28)) > 0.97)
    ours = keep_largest_components(mask, n, connectivity)
    assert ours.dtype == bool
    np.testing.assert_array_equal(ours, _scipy_largest(mask, n, connectivity))


def test_connectivity_distinguishes_face_edge_corner():
    face = np.zeros((3, 3, 3), bool)
    face[1, 1, 0] = face[1, 1, 1] = True
    edge = np.zeros((3, 3, 3), bool)
    edge[1, 0, 0] = edge[1, 1, 1] = True
    corner = np.zeros((3, 3, 3), bool)
    corner[0, 0, 0] = corner[1, 1, 1] = True
    assert keep_largest_components(face, 1, 6).sum() == 2
    assert keep_largest_components(edge, 1, 6).sum() == 1
    assert keep_largest_components(edge, 1, 18).sum() == 2
    assert keep_largest_components(corner, 1, 18).sum() == 1
    assert keep_largest_components(corner, 1, 26).sum() == 2


def test_keep_largest_edge_cases():
    assert not keep_largest_components(np.zeros((4, 4, 4), np.uint8), 2).any()
    with pytest.raises(KitsegError, match="connectivity"):
        keep_largest_components(np.ones((2, 2, 2), bool), 1, connectivity=8)
    with pytest.raises(KitsegError, match=">= 1"):
        keep_largest_components(np.ones((2, 2, 2), bool), 0)


def test_filter_components_multiclass_drops_small_components_with_their_tumor():
    lab = np.zeros((10, 10, 20), np.uint8)
    lab[2:8, 2:8, 1:6] = 1  # large kidney with tumor
    lab[3:5, 3:5, 4:6] = 2
    lab[2:6, 2:6, 10:13] = 1  # second kidney
    lab[4:6, 4:6, 16:18] = 2  # floating tumor blob, smallest
    lab[0, 0, 19] = 3  # a label outside the foreground set stays
    one = filter_components_multiclass(lab, 1, 18)
    assert one.dtype == np.uint8
    assert (one[:, :, 8:] == 0).sum() == lab[:, :, 8:].size - 1 and one[0, 0, 19] == 3
    np.testing.assert_array_equal(one[:, :, :8], lab[:, :, :8])
    two = filter_components_multiclass(lab, 2, 18)
    np.testing.assert_array_equal(two[:, :, :14], lab[:, :, :14])
    assert not two[:, :, 14:19].any()


def test_tumor_inside_kidney():
    lab = np.zeros((8, 8, 16), np.uint8)
    lab[2:6, 2:6, 1:5] = 1
    lab[3:5, 3:5, 5:7] = 2  # tumor touching the kidney (face): kept
    lab[3:5, 3:5, 10:12] = 2  # floating tumor: removed
    lab[6, 6, 5] = 2  # tumor touching the kidney only at a corner of (5, 5, 4)
    out = tumor_inside_kidney(lab, connectivity=6)
    assert (out[3:5, 3:5, 5:7] == 2).all() and not out[:, :, 9:].any() and out[6, 6, 5] == 0
    np.testing.assert_array_equal(out == 1, lab == 1)
    assert tumor_inside_kidney(lab, connectivity=26)[6, 6, 5] == 2
    assert not tumor_inside_kidney(np.where(lab == 2, 2, 0).astype(np.uint8)).any()


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_median_filter3_equals_scipy_everywhere(rng, dtype):
    arr = np.zeros((12, 14, 16), dtype)
    arr[0:5, 3:9, 10:16] = 1  # touches three image borders
    arr[2:4, 4:7, 12:15] = 2
    arr[rng.random(arr.shape) > 0.93] = 2
    arr[9:12, 0:3, 0:2] = rng.random((3, 3, 2)).astype(dtype) if dtype == np.float32 else 1
    expected = ndimage.median_filter(arr, size=3, mode="nearest")
    np.testing.assert_array_equal(median_filter3(arr), expected)
    assert not median_filter3(np.zeros((3, 3, 3), dtype)).any()


def test_median_on_nested_labels_is_a_majority_vote_per_region(rng):
    lab = rng.choice(np.array([0, 1, 2], np.uint8), size=(10, 10, 10), p=[0.4, 0.35, 0.25])
    med = median_filter3(lab)
    for t in (1, 2):
        votes = ndimage.uniform_filter((lab >= t).astype(np.float64), size=3, mode="nearest") * 27
        np.testing.assert_array_equal(med >= t, votes > 13.5)


# ---------------------------------------------------------------------------------------------
# TuNet Algorithm 1
# ---------------------------------------------------------------------------------------------
def _brute_region_grow(a: np.ndarray, b: np.ndarray, connectivity: int) -> np.ndarray:
    lab, n = ndimage.label(b, structure=STRUCTURE[connectivity])
    grown_a = ndimage.binary_dilation(a, structure=STRUCTURE[connectivity])
    out = a.copy()
    for k in range(1, n + 1):
        comp = lab == k
        if (comp & grown_a).any():
            out |= comp
    return out


@pytest.mark.parametrize("connectivity", [6, 26])
def test_region_grow_matches_brute_force(rng, connectivity):
    b = ndimage.binary_opening(rng.random((16, 16, 16)) > 0.5)
    a = (rng.random(b.shape) > 0.985) | (b & (rng.random(b.shape) > 0.99))
    np.testing.assert_array_equal(region_grow(a, b, connectivity), _brute_region_grow(a, b, connectivity))


def _maps(shape=(12, 12, 30)):
    return np.zeros(shape, np.float32), np.zeros(shape, np.float32)


def test_tunet_whole_region_refined_with_04():
    pw, pt = _maps()
    pw[2:8, 2:8, 2:8] = 0.9  # seed A
    pw[2:8, 2:8, 8:10] = 0.45  # touches A, above 0.4: merged
    pw[2:8, 2:8, 14:17] = 0.45  # above 0.4 but separate: not merged
    pw[2:8, 2:8, 0:2] = 0.35  # touches A, below 0.4: not merged
    lab = tunet_algorithm1(pw, pt, empty_tumor_fallback="none")
    assert lab.dtype == np.uint8
    expected = np.zeros(pw.shape, bool)
    expected[2:8, 2:8, 2:10] = True
    np.testing.assert_array_equal(lab == 1, expected)


def test_tunet_whole_region_empty_falls_back_to_01():
    pw, pt = _maps()
    pw[2:6, 2:6, 2:6] = 0.3
    pw[2:6, 2:6, 20:22] = 0.15  # separate, above 0.1: kept (plain binarisation, no region growing)
    pw[8:10, 8:10, 8:10] = 0.05
    lab = tunet_algorithm1(pw, pt, empty_tumor_fallback="none")
    np.testing.assert_array_equal(lab == 1, pw > 0.1)


def test_tunet_tumor_empty_at_05_uses_01():
    pw, pt = _maps()
    pw[1:11, 1:11, 1:25] = 0.9
    pt[3:6, 3:6, 3:6] = 0.3
    pt[3:6, 3:6, 15:17] = 0.12  # separate, above 0.1: also tumor
    pt[8:10, 8:10, 8:10] = 0.08
    lab = tunet_algorithm1(pw, pt)
    np.testing.assert_array_equal(lab == 2, pt > 0.1)
    np.testing.assert_array_equal(lab == 1, (pw > 0.5) & ~(pt > 0.1))


def test_tunet_tumor_empty_at_01_becomes_whole_region_as_the_paper_says():
    pw, pt = _maps()
    pw[1:6, 1:6, 1:6] = 0.9
    pt[1:6, 1:6, 1:6] = 0.05
    lab = tunet_algorithm1(pw, pt)
    np.testing.assert_array_equal(lab == 2, pw > 0.5)
    assert not (lab == 1).any()
    lab_none = tunet_algorithm1(pw, pt, empty_tumor_fallback="none")
    np.testing.assert_array_equal(lab_none == 1, pw > 0.5)
    assert not (lab_none == 2).any()


def test_tunet_small_tumor_grows_with_02():
    pw, pt = _maps()
    pw[1:11, 1:11, 1:29] = 0.9
    pt[4:8, 4:8, 4:8] = 0.8  # 64 voxels < 100
    pt[4:8, 4:8, 8:10] = 0.25  # touches, above 0.2: merged
    pt[4:8, 4:8, 2:4] = 0.15  # touches, below 0.2: not merged
    pt[4:8, 4:8, 20:22] = 0.25  # separate: not merged
    lab = tunet_algorithm1(pw, pt)
    expected = np.zeros(pt.shape, bool)
    expected[4:8, 4:8, 4:10] = True
    np.testing.assert_array_equal(lab == 2, expected)


def test_tunet_large_tumor_grows_with_03():
    pw, pt = _maps()
    pw[1:11, 1:11, 1:29] = 0.9
    pt[3:8, 3:8, 4:9] = 0.8  # 125 voxels >= 100
    pt[3:8, 3:8, 9:11] = 0.35  # touches, above 0.3: merged
    pt[3:8, 3:8, 2:4] = 0.25  # touches, above 0.2 but below 0.3: not merged
    lab = tunet_algorithm1(pw, pt)
    expected = np.zeros(pt.shape, bool)
    expected[3:8, 3:8, 4:11] = True
    np.testing.assert_array_equal(lab == 2, expected)


def test_tunet_merge_and_lnet_multiplication():
    pw, pt = _maps()
    pw[1:6, 1:6, 1:6] = 0.9
    pt[1:6, 1:6, 10:13] = 0.9  # tumor outside the whole region still becomes label 2 (merge = union)
    lnet = np.ones(pw.shape, bool)
    lnet[:, :, 12:] = False
    lab = tunet_algorithm1(pw, pt, lnet)
    assert (lab[1:6, 1:6, 1:6] == 1).all()
    assert (lab[1:6, 1:6, 10:12] == 2).all() and not lab[:, :, 12:].any()
    with pytest.raises(KitsegError, match="one grid"):
        tunet_algorithm1(pw, pt[:, :, :5])
    with pytest.raises(KitsegError, match="one grid"):
        tunet_algorithm1(pw, pt, lnet[:, :, :5])


# ---------------------------------------------------------------------------------------------
# Dense CRF (optional dependency)
# ---------------------------------------------------------------------------------------------
def test_dense_crf_removes_isolated_noise(rng):
    pytest.importorskip("pydensecrf")
    image = np.full((12, 24, 24), 40.0, np.float32)
    truth = np.zeros(image.shape, bool)
    truth[3:9, 6:18, 6:18] = True
    image[truth] = 170.0
    p_fg = np.where(truth, 0.8, 0.2).astype(np.float32)
    flips = rng.random(image.shape) > 0.97
    p_fg[flips] = 1.0 - p_fg[flips]  # isolated wrong voxels
    probs = np.stack([1 - p_fg, p_fg])
    out = dense_crf(probs, image, spacing=(2.0, 1.0, 1.0))
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert ((probs.argmax(0) == 1) != truth).sum() > 100
    assert ((out == 1) != truth).sum() < ((probs.argmax(0) == 1) != truth).sum() / 10
    q = dense_crf(probs, image, (2.0, 1.0, 1.0), return_probs=True)
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    with pytest.raises(KitsegError, match="over the image grid"):
        dense_crf(probs[:, :5], image, (1, 1, 1))


def test_dense_crf_without_the_package_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("pydensecrf"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(KitsegError, match="pip install pydensecrf2"):
        dense_crf(np.zeros((2, 2, 2, 2), np.float32), np.zeros((2, 2, 2), np.float32), (1, 1, 1))


def _body_and_affine(shape=(30, 40, 60), spacing=4.0):
    """A CT-like body (0 HU ellipse in every slice, air around) centred left-right at x index 30."""
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    ct = np.where(((y - 20) / 18.0) ** 2 + ((x - 30) / 28.0) ** 2 <= 1, 0.0, -1000.0).astype(np.float32)
    # index (z, y, x) -> LPS (x, y, z) in mm: the canonical orientation (x to the patient's left)
    affine = np.array([[0, 0, spacing, 0], [0, spacing, 0, 0], [spacing, 0, 0, 0], [0, 0, 0, 1]], float)
    return ct, affine


def _blob(labels, centre, radius, value=1):
    z, y, x = np.meshgrid(*[np.arange(s) for s in labels.shape], indexing="ij")
    r = np.asarray(radius, float)
    inside = ((z - centre[0]) / r[0]) ** 2 + ((y - centre[1]) / r[1]) ** 2 + ((x - centre[2]) / r[2]) ** 2 <= 1
    labels[inside] = value
    return inside


def test_kidneys_by_side_keeps_one_kidney_per_side_despite_a_larger_distractor():
    from kitseg.postprocessing import kidneys_by_side

    ct, affine = _body_and_affine()
    labels = np.zeros(ct.shape, np.uint8)
    right = _blob(labels, (15, 26, 16), (4, 3, 2.5))  # the patient's right: low x
    left = _blob(labels, (15, 26, 44), (4, 3, 2.5))
    tumor = _blob(labels, (15, 26, 47), (2, 2, 1.5), 2)  # part of the left kidney
    distractor = _blob(labels, (10, 12, 12), (5, 5, 4))  # liver-like, larger than either kidney, right side
    assert distractor.sum() > right.sum() and distractor.sum() > (left | tumor).sum()
    # "the two largest components" keeps the distractor and loses a kidney ...
    two = filter_components_multiclass(labels, 2)
    assert (two[distractor] > 0).all() and not (two[right] > 0).all()
    # ... one per side of the midline keeps both kidneys and the tumor (these toy kidneys hold 8-9 ml)
    out = kidneys_by_side(labels, ct, affine, min_ml=2.0)
    assert (out[right] == 1).all() and (out[left & ~tumor] == 1).all() and (out[tumor] == 2).all()
    assert (out[distractor & ~right] == 0).all()


def test_kidneys_by_side_drops_specks_and_uses_the_body_midline_not_the_image_centre():
    from kitseg.postprocessing import kidneys_by_side

    ct, affine = _body_and_affine()
    ct[:, :, :14] = -1000.0  # the body is off-centre: its midline (about x index 37) is left of the image centre (30)
    labels = np.zeros(ct.shape, np.uint8)
    a = _blob(labels, (15, 26, 19), (4, 3, 2.5))  # right of both
    b = _blob(labels, (15, 26, 32), (3, 2, 2))  # smaller; right of the body's midline, left of the image centre
    speck = _blob(labels, (5, 30, 50), (0.5, 0.5, 0.5))  # 1 voxel = 0.064 ml on the left: below min_ml
    out = kidneys_by_side(labels, ct, affine, min_ml=1.0)
    assert (out[a] == 1).all() and (out[b] == 0).all() and (out[speck] == 0).all()
    assert not kidneys_by_side(np.zeros_like(labels), ct, affine).any()


def test_kidneys_by_side_keeps_a_kidney_pushed_forward_by_a_giant_tumor_and_drops_bowel_in_front():
    """A kidney with a tumor of over a litre reaches far forward (on the benchmark's training masks such
    kidneys' centres lie up to 31 mm in front of the body's centre): a component larger than ``large_ml``
    may lie up to ``large_max_anterior_mm`` in front, a kidney-sized one only ``max_anterior_mm``."""
    from kitseg.postprocessing import kidneys_by_side

    ct, affine = _body_and_affine()  # 4 mm voxels; the body's centre front to back is at y index 20
    labels = np.zeros(ct.shape, np.uint8)
    giant = _blob(labels, (15, 12, 44), (6, 7, 9))  # the patient's left, 101 ml, centre 32 mm in front
    tumor = _blob(labels, (15, 9, 44), (5, 4, 7), 2)
    small = _blob(labels, (15, 12, 16), (3, 3, 3))  # the right (a solitary kidney on the left), 8 ml, 32 mm in front
    out = kidneys_by_side(labels, ct, affine, min_ml=2.0, large_ml=50.0)  # the toy's scale: 101 ml is "large"
    assert (out[giant & ~tumor] == 1).all() and (out[tumor] == 2).all()
    assert (out[small] == 0).all()
    assert not kidneys_by_side(labels, ct, affine, min_ml=2.0, large_ml=200.0)[giant].any()


def test_tumor_far_from_any_kidney_is_removed_and_attached_tumor_kept():
    labels = np.zeros((20, 30, 30), np.uint8)
    kidney = _blob(labels, (10, 15, 8), (5, 4, 3))
    attached = _blob(labels, (10, 15, 11), (2, 2, 1.5), 2)
    far = _blob(labels, (10, 15, 24), (3, 3, 3), 2)  # in the "liver", touching no kidney voxel
    out = tumor_inside_kidney(labels)
    assert (out[attached] == 2).all() and (out[kidney & ~attached] == 1).all() and (out[far] == 0).all()


def test_drop_small_tumors_relabels_specks_as_kidney_and_keeps_the_case_tumor():
    from kitseg.postprocessing import drop_small_tumors

    labels = np.zeros((20, 40, 40), np.uint8)
    kidney = _blob(labels, (10, 20, 20), (8, 12, 10))
    big = _blob(labels, (10, 20, 24), (4, 5, 4), 2)  # 0.34 ml at 1 x 1 x 1 mm voxels (voxel_ml 0.001)
    speck = _blob(labels, (10, 20, 13), (1, 1, 1), 2)  # 7 voxels
    out = drop_small_tumors(labels, 0.001, min_ml=0.05)
    assert (out[big] == 2).all() and (out[speck] == 1).all() and (out[kidney & ~big & ~speck] == 1).all()
    frac = drop_small_tumors(labels, 0.001, min_fraction=0.1)  # the speck is 2 % of the largest tumor
    assert (frac == out).all()
    assert (drop_small_tumors(labels, 0.001) == labels).all()  # no thresholds: nothing changes
    single = np.where(speck, 2, np.where(kidney, 1, 0)).astype(np.uint8)
    assert (drop_small_tumors(single, 0.001, min_fraction=0.5) == single).all()  # the largest always stays


def test_class_threshold_turns_unsure_tumor_inside_the_kidney_into_tumor_only():
    from kitseg.recipes import load_recipe
    from kitseg.stages.ops import OpContext, class_threshold
    from kitseg.volume import Volume

    stage = load_recipe("kitseg_cascade", profile="cpu").stage("segment")  # softmax: background, kidney, tumor
    probs = np.zeros((3, 4, 6, 6), np.float32)
    probs[0] = 1.0
    probs[:, 1:3, 1:5, 1:5] = np.array([0.1, 0.6, 0.3])[:, None, None, None]  # the kidney: argmax kidney
    probs[:, 2, 2:4, 2:4] = np.array([0.2, 0.45, 0.35])[:, None, None]  # a small tumor the kidney outvotes
    probs[:, 0, 0, 0] = np.array([0.6, 0.0, 0.4])  # unsure tumor in the background: stays background
    labels = np.where(probs.argmax(0) == 1, 1, 0).astype(np.uint8)
    context = OpContext(stage, probs, None, Volume(np.zeros((4, 6, 6), np.int16), np.eye(4)))
    out = class_threshold(labels, context, cls="tumor", min_prob=0.33)
    assert (out[2, 2:4, 2:4] == 2).all() and (out == 2).sum() == 4
    assert out[0, 0, 0] == 0 and ((out > 0) == (labels > 0)).all()
    assert (class_threshold(labels, context, cls="tumor", min_prob=0.36) == labels).all()
    with pytest.raises(KitsegError, match="classes are kidney, tumor"):
        class_threshold(labels, context, cls="cyst", min_prob=0.3)
    with pytest.raises(KitsegError, match="needs a softmax stage's probabilities"):
        class_threshold(labels, OpContext(stage, None, None, context.ct), min_prob=0.3)
