"""Metrics: hand-computed cases, MONAI and DeepMind on real KiTS19 labels, folder evaluation and its errors."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
from scipy import ndimage

from conftest import kits19_label
from kitseg.cli.main import main
from kitseg.datasets import KITS23
from kitseg.errors import KitsegError
from kitseg.io import read_label, write_volume
from kitseg.metrics import (
    Summary,
    detection,
    dice,
    evaluate_folder,
    hd95_msd,
    kits19_case_scores,
    region_scores,
    surface_dice,
    volumes_ml,
)
from kitseg.metrics.surface import _clusters
from kitseg.volume import Volume


# ---------------------------------------------------------------------------------------------
# Hand-computed
# ---------------------------------------------------------------------------------------------
def test_kits19_scores_by_hand():
    gt = np.zeros((1, 1, 10), np.uint8)
    pred = np.zeros_like(gt)
    gt[0, 0, 0:6] = 1
    gt[0, 0, 4:6] = 2
    pred[0, 0, 3:7] = 1
    pred[0, 0, 5:7] = 2
    s = kits19_case_scores(pred, gt)
    # kidney (label > 0): |P| = 4, |G| = 6, overlap 3 -> 0.6; tumor (> 1): |P| = 2, |G| = 2, overlap 1 -> 0.5
    assert s == pytest.approx({"kidney_dice": 0.6, "tumor_dice": 0.5, "composite": 0.55})


def test_kits19_empty_conventions_follow_the_official_code():
    gt = np.zeros((2, 2, 2), np.uint8)
    gt[0, 0, 0] = 1
    # no tumor anywhere: the official code's ZeroDivisionError branch returns tumor Dice 0.0
    assert kits19_case_scores(gt.copy(), gt) == {"kidney_dice": 1.0, "tumor_dice": 0.0, "composite": 0.5}
    # nothing anywhere: (0.0, 0.0)
    empty = np.zeros_like(gt)
    assert kits19_case_scores(empty, empty) == {"kidney_dice": 0.0, "tumor_dice": 0.0, "composite": 0.0}
    # tumor means label > 1, as in the official code (a label 3 counts as tumor there)
    pred = gt.copy()
    pred[0, 0, 0] = 3
    gt2 = pred.copy()
    gt2[0, 0, 0] = 2
    assert kits19_case_scores(pred, gt2)["tumor_dice"] == 1.0
    with pytest.raises(KitsegError, match="shape"):
        kits19_case_scores(gt, gt[:1])


def test_kits21_dice_empty_conventions():
    e = np.zeros((2, 2, 2), bool)
    f = e.copy()
    f[0, 0, 0] = True
    assert dice(e, e) == 1.0 and dice(f, e) == 0.0 and dice(e, f) == 0.0 and dice(f, f) == 1.0
    assert surface_dice(e, e, (1, 1, 1), 1.0) == 1.0 and surface_dice(f, e, (1, 1, 1), 1.0) == 0.0
    assert hd95_msd(f, e, (1, 1, 1)) == (None, None)


def test_hd95_and_msd_by_hand():
    gt = np.zeros((3, 3, 8), bool)
    pred = np.zeros_like(gt)
    pred[1, 1, 0] = True
    gt[1, 1, 0] = gt[1, 1, 4] = True
    # spacing x = 1.5 mm: d(P->G) = [0]; d(G->P) = [0, 6]; HD95 = max(0, 0.95 * 6); MSD = (0 + 0 + 6) / 3
    hd, msd = hd95_msd(pred, gt, (1.0, 1.0, 1.5))
    assert hd == pytest.approx(5.7) and msd == pytest.approx(2.0)


def test_surface_dice_by_hand():
    a = np.zeros((6, 6, 12), bool)
    a[1:5, 1:5, 1:5] = True
    b = np.zeros_like(a)
    b[1:5, 1:5, 7:11] = True  # 2 voxels = 2 mm gap between the cubes
    assert surface_dice(a, a, (1, 1, 1), 0.5) == 1.0
    assert surface_dice(a, b, (1, 1, 1), 1.0) == 0.0
    # every surfel of each cube lies within 9 mm (the far faces) of the other cube's surface
    assert surface_dice(a, b, (1, 1, 1), 9.0) == 1.0


def test_detection_definitions():
    gt = np.zeros((6, 6, 20), np.uint8)
    gt[1:5, 1:5, 1:5] = 2  # found
    gt[1:5, 1:5, 8:10] = 2  # missed
    pred = np.zeros_like(gt)
    pred[2, 2, 2] = 2  # one voxel inside the first tumor is enough
    pred[1:3, 1:3, 15:18] = 2  # false-positive tumor
    d = detection(pred, gt)
    assert d == {"gt_tumors": 2, "pred_tumors": 2, "detected_tumors": 1, "missed_tumors": 1,
                 "false_positive_tumors": 1, "sensitivity": 0.5, "specificity": None, "outcome": "TP"}
    only_fp = np.zeros_like(gt)
    only_fp[1:3, 1:3, 15:18] = 2  # every ground-truth tumor missed, a tumor predicted elsewhere: still a miss
    d = detection(only_fp, gt)
    assert (d["outcome"], d["detected_tumors"], d["missed_tumors"], d["false_positive_tumors"]) == ("FN", 0, 2, 1)
    # with a voxel size, pieces under 0.1 ml are not tumors: 1 ml voxels make the 1-voxel hit no tumor
    d = detection(pred, gt, voxel_ml=1.0 / 12)  # 12 voxels = 1 ml; the single voxel is 0.083 ml
    assert (d["pred_tumors"], d["detected_tumors"], d["outcome"]) == (1, 0, "FN")
    none = np.zeros_like(gt)
    assert detection(none, gt)["outcome"] == "FN" and detection(none, gt)["sensitivity"] == 0.0
    assert detection(pred, none)["outcome"] == "FP" and detection(pred, none)["specificity"] == 0.0
    tn = detection(none, none)
    assert tn["outcome"] == "TN" and tn["specificity"] == 1.0 and tn["sensitivity"] is None


def test_volumes_ml():
    lab = np.zeros((4, 4, 4), np.uint8)
    lab[0, :2, :] = 1  # 8 voxels
    lab[1, 0, :3] = 2  # 3 voxels
    lab[2, 0, 0] = 3
    v = volumes_ml(lab, 0.002, KITS23.labels)
    assert v == pytest.approx({"kidney_ml": 0.016, "tumor_ml": 0.006, "cyst_ml": 0.002, "kidney_with_masses_ml": 0.024})


# ---------------------------------------------------------------------------------------------
# Against MONAI and DeepMind on a real KiTS19 label map with known perturbations
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def case61():
    vol = read_label(kits19_label(61))  # 29 slices of 512 x 512 at 5 mm
    comp, _ = ndimage.label(vol.array > 0)
    fg = np.argwhere(comp == comp[vol.array == 2][0])  # the kidney with the tumor, to keep the test fast
    lo, hi = np.maximum(fg.min(0) - 6, 0), fg.max(0) + 7
    crop = vol.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return np.pad(crop, ((0, 0), (0, 0), (0, 30))), vol.spacing  # room for a far-away false positive


def _perturb(gt: np.ndarray, how: str) -> np.ndarray:
    pred = gt.copy()
    if how == "erosion":
        pred[(gt > 0) & ~ndimage.binary_erosion(gt > 0, iterations=2)] = 0
        pred[(gt == 2) & ~ndimage.binary_erosion(gt == 2)] = 1
    elif how == "dilation":
        pred[ndimage.binary_dilation(gt > 0, iterations=2) & (gt == 0)] = 1
    elif how == "shift+far":
        pred = np.roll(gt, (1, 4, -3), axis=(0, 1, 2))
        pred[0:2, 0:3, -4:-1] = 2  # a far-away false positive: its own cluster in extract_surface
    elif how == "deleted tumor":
        pred[gt == 2] = 1
    return pred


def _monai(pred: np.ndarray, gt: np.ndarray, spacing, tol: float) -> tuple[float, float, float]:
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    def onehot(m):
        t = torch.from_numpy(m.astype(np.float32))[None, None]
        return torch.cat([1 - t, t], 1)

    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(onehot(pred), onehot(gt), percentile=95, spacing=sp)
        msd = compute_average_surface_distance(onehot(pred), onehot(gt), symmetric=True, spacing=sp)
        sd = compute_surface_dice(onehot(pred), onehot(gt), [tol], spacing=sp, use_subvoxels=True)
    return float(hd), float(msd), float(sd)


@pytest.mark.parametrize("how", ["erosion", "dilation", "shift+far", "deleted tumor"])
def test_surface_metrics_match_monai_on_real_labels(case61, how):
    gt, spacing = case61
    pred = _perturb(gt, how)
    if how == "shift+far":
        assert len(list(_clusters(pred > 0))) == 2
    tols = {"kidney": 1.0331, "tumor": 1.1498}
    ours = region_scores(pred, gt, spacing, {"kidney": [1, 2], "tumor": [2]}, tols)
    for region, labels in (("kidney", [1, 2]), ("tumor", [2])):
        p, g = np.isin(pred, labels), np.isin(gt, labels)
        assert ours[region]["dice"] == pytest.approx(dice(p, g))
        if not p.any():
            assert ours[region]["hd95_mm"] is None and ours[region]["msd_mm"] is None
            assert ours[region]["surface_dice"] == 0.0
            continue
        hd, msd, sd = _monai(p, g, spacing, tols[region])
        assert ours[region]["hd95_mm"] == pytest.approx(hd, rel=1e-5)
        assert ours[region]["msd_mm"] == pytest.approx(msd, rel=1e-5)
        assert ours[region]["surface_dice"] == pytest.approx(sd, abs=1e-6)
        assert (0.0 < sd < 1.0) if (p != g).any() else sd == 1.0


def test_surface_dice_matches_deepmind_on_real_labels(case61):
    sd_lib = pytest.importorskip("surface_distance")
    gt, spacing = case61
    for how in ("dilation", "shift+far"):
        p, g = _perturb(gt, how) > 0, gt > 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the reference code uses old scipy names
            ref = sd_lib.compute_surface_dice_at_tolerance(sd_lib.compute_surface_distances(g, p, spacing), 1.0331)
        assert surface_dice(p, g, spacing, 1.0331) == pytest.approx(ref, abs=1e-6)  # MONAI's area table is float32


def test_clusters_reaching_into_each_others_boxes_match_monai():
    shell = np.zeros((80, 80, 80), bool)
    shell[2:78, 2:78, 2:78] = True
    shell[10:70, 10:70, 10:70] = False  # a hollow box ...
    shell[:24, :24, :24] = False  # ... open at one corner
    blob = np.zeros_like(shell)
    blob[36:44, 35:45, 37:41] = True  # inside the shell's box, far from the shell: its own cluster
    blob[4:7, 4:7, 4:7] = True  # in the open corner: its own cluster, first in raster order of the shell's box
    pred = shell | blob
    gt = np.roll(pred, 1, axis=2)
    assert len(list(_clusters(pred))) == 3
    hd, msd, sd = _monai(pred, gt, (1.5, 1.0, 0.8), 1.0)
    assert hd95_msd(pred, gt, (1.5, 1.0, 0.8)) == pytest.approx((hd, msd), rel=1e-5)
    assert surface_dice(pred, gt, (1.5, 1.0, 0.8), 1.0) == pytest.approx(sd, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Folder evaluation
# ---------------------------------------------------------------------------------------------
def _vol(arr: np.ndarray, spacing=(2.0, 0.8, 0.8)) -> Volume:
    return Volume.from_geometry(arr.astype(np.uint8), spacing=spacing, origin=(-10.0, 5.0, 30.0))


def _case(seed: int, tumor: bool = True) -> np.ndarray:
    lab = np.zeros((10, 24, 24), np.uint8)
    lab[2:8, 4:12 + seed, 4:12] = 1
    if tumor:
        lab[2:8, 5:11, 5:8 + seed] = 2  # 0.18-0.23 ml: tumors of at least 0.1 ml count (kitseg.metrics.tumors)
    return lab


@pytest.fixture
def folders(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for i, tumor in ((1, True), (2, True), (3, False)):
        g = _case(i, tumor)
        p = g.copy()
        p[2, 4:6, 4:6] = 0  # small errors
        write_volume(_vol(g), gt / f"case_{i:05d}" / "segmentation.nii.gz")
        write_volume(_vol(p), pred / f"case_{i:05d}.nii.gz")
    return pred, gt


def test_evaluate_folder_writes_csv_and_typed_summary(folders, tmp_path):
    pred, gt = folders
    out = tmp_path / "out"
    summary = evaluate_folder(pred, gt, out)
    assert summary.n_cases == 3 and summary.label_set == "KiTS19"
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["case_id"] for r in rows] == ["case_00001", "case_00002", "case_00003"]
    g, p = read_label(gt / "case_00001" / "segmentation.nii.gz"), read_label(pred / "case_00001.nii.gz")
    expected = kits19_case_scores(p.array, g.array)
    assert float(rows[0]["kits19_kidney_dice"]) == pytest.approx(expected["kidney_dice"])
    assert float(rows[0]["gt_tumor_ml"]) == pytest.approx((g.array == 2).sum() * 2.0 * 0.8 * 0.8 / 1000)
    assert rows[2]["tumor_hd95_mm"] == "" and rows[2]["tumor_detection_outcome"] == "TN"
    loaded = Summary.load(out / "summary.json")
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["schema_version"] == 1
    assert loaded.mean["kits19_kidney_dice"] == pytest.approx(np.mean([float(r["kits19_kidney_dice"]) for r in rows]))
    assert loaded.n_defined["tumor_hd95_mm"] == 2  # undefined without a tumor on both sides
    assert loaded.detection.tn_cases == 1 and loaded.detection.case_specificity == 1.0


def test_evaluate_refuses_mismatched_or_missing_cases(folders, tmp_path):
    pred, gt = folders
    write_volume(_vol(_case(1), spacing=(2.5, 0.8, 0.8)), pred / "case_00001.nii.gz")
    with pytest.raises(KitsegError, match="geometry differs") as err:
        evaluate_folder(pred, gt, None)
    assert "case_00001.nii.gz" in str(err.value)
    write_volume(_vol(_case(1)[:, :20]), pred / "case_00001.nii.gz")
    with pytest.raises(KitsegError, match="shapes differ"):
        evaluate_folder(pred, gt, None)
    (pred / "case_00001.nii.gz").unlink()
    with pytest.raises(KitsegError, match="case_00001.*--allow-missing"):
        evaluate_folder(pred, gt, None)
    assert evaluate_folder(pred, gt, None, allow_missing=True).missing_predictions == ["case_00001"]
    write_volume(_vol(_case(4)), pred / "case_00004.nii.gz")
    with pytest.raises(KitsegError, match="no ground truth for case case_00004"):
        evaluate_folder(pred, gt, None, allow_missing=True)


def test_evaluate_cli(folders, tmp_path, capsys):
    pred, gt = folders
    assert main(["evaluate", str(pred), str(gt), "-o", str(tmp_path / "o")]) == 0
    assert "kits19_composite" in capsys.readouterr().out
    assert (tmp_path / "o" / "metrics.csv").exists() and (tmp_path / "o" / "summary.json").exists()
    (pred / "case_00002.nii.gz").unlink()
    assert main(["evaluate", str(pred), str(gt)]) == 2
    assert "case_00002" in capsys.readouterr().err


def test_evaluate_kits23_regions(tmp_path):
    g = _case(2)
    g[6:8, 9:11, 9:11] = 3  # a cyst
    p = g.copy()
    p[g == 3] = 2  # cyst called tumor: masses unchanged, tumor worse
    write_volume(_vol(g), tmp_path / "gt" / "case_00400" / "segmentation.nii.gz")
    write_volume(_vol(p), tmp_path / "pred" / "case_00400.nii.gz")
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--labels", "kits23", "--no-distances"]) == 0
    s = Summary.load(tmp_path / "pred" / "summary.json")
    row = s.cases[0]
    assert row.kits19 is None and set(row.regions) == {"kidney_and_masses", "masses", "tumor"}
    assert row.regions["masses"].dice == 1.0 and row.regions["kidney_and_masses"].surface_dice == 1.0
    assert row.regions["tumor"].dice == pytest.approx(dice(p == 2, g == 2)) and row.regions["tumor"].dice < 1
    assert s.surface_dice_tolerances_mm["masses"] == pytest.approx(1.1328796488598762)
    assert row.regions["tumor"].hd95_mm is None  # --no-distances
