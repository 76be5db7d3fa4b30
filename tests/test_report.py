"""Report: measurements on crafted volumes, display orientation checked on the rendered pixels, the HTML page."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from kitseg.cli.main import main
from kitseg.datasets import KITS23
from kitseg.errors import KitsegError
from kitseg.io import read_label, read_volume, write_volume
from kitseg.report import body_midline_x, make_report, max_feret_diameter_mm, measure
from kitseg.report.panels import choose_slices, file_slice_numbers, render_case
from kitseg.volume import Volume

SPACING = (2.5, 1.0, 1.0)


def _phantom(body_cx: float = 40.0, tumor: bool = True, body_rx: float = 36.0) -> tuple[Volume, Volume]:
    """CT + labels (z, y, x) = (24, 64, 80): an elliptic body, kidneys at x = 22 (patient's right) and x = 58
    (left), a tumor on the upper, anterior, lateral part of the left kidney."""
    z, y, x = np.mgrid[0:24, 0:64, 0:80].astype(float)
    lab = np.zeros((24, 64, 80), np.uint8)
    for cx in (22, 58):
        lab[((z - 12) / 8) ** 2 + ((y - 32) / 8) ** 2 + ((x - cx) / 6) ** 2 <= 1] = 1
    if tumor:
        lab[((z - 16) * 2.5) ** 2 + (y - 26) ** 2 + (x - 63) ** 2 <= 36] = 2  # ball of radius 6 mm
    ct = np.where(((y - 32) / 28) ** 2 + ((x - body_cx) / body_rx) ** 2 <= 1, 40.0, -1000.0)
    ct[lab == 1], ct[lab == 2] = 170.0, 80.0
    image = Volume.from_geometry(ct.astype(np.int16), spacing=SPACING, origin=(-40.0, -30.0, 100.0))
    return image, image.with_array(lab)


def test_measure_volumes_sides_and_diameter():
    image, labels = _phantom()
    m = measure(labels, image)
    arr = labels.array
    ml = np.prod(SPACING) / 1000
    assert m.kidney_with_masses_ml == pytest.approx(np.count_nonzero(arr) * ml)
    assert m.tumor_ml == pytest.approx(np.count_nonzero(arr == 2) * ml)
    assert m.kidney_ml == pytest.approx(np.count_nonzero(arr == 1) * ml)
    assert m.right_kidney_ml == pytest.approx(np.count_nonzero(arr[:, :, :40]) * ml)
    assert m.left_kidney_ml == pytest.approx(np.count_nonzero(arr[:, :, 40:]) * ml)
    assert m.tumor_side == "left" and m.tumor_count == 1 and m.midline_x == pytest.approx(40.0, abs=0.01)
    # voxel centres of a 6 mm ball: diameter between 12 mm minus one voxel (2.5 mm) and 12 mm
    assert 12.0 - 2.5 <= m.largest_tumor_diameter_mm <= 12.0


def test_feret_diameter_exact_on_a_box_and_against_brute_force(rng):
    vol = Volume.from_geometry(np.zeros((12, 12, 12), np.uint8), spacing=(2.5, 0.8, 1.2))
    box = np.zeros((12, 12, 12), bool)
    box[2:6, 3:9, 1:5] = True
    assert max_feret_diameter_mm(box, vol) == pytest.approx(np.sqrt((3 * 2.5) ** 2 + (5 * 0.8) ** 2 + (3 * 1.2) ** 2))
    blob = rng.random((12, 12, 12)) > 0.8
    pts = np.argwhere(blob) * np.array([2.5, 0.8, 1.2])
    brute = np.max(np.linalg.norm(pts[:, None] - pts[None], axis=-1))
    assert max_feret_diameter_mm(blob, vol) == pytest.approx(brute)
    flat = np.zeros((12, 12, 12), bool)
    flat[4, 2:9, 3:7] = True  # one slice: a degenerate convex hull
    assert max_feret_diameter_mm(flat, vol) == pytest.approx(np.hypot(6 * 0.8, 3 * 1.2))


def test_laterality_uses_the_body_midline_not_the_image_centre():
    image, labels = _phantom(body_cx=50.0, tumor=False, body_rx=28.0)
    arr = labels.array.copy()
    arr[10:13, 29:34, 44:49] = 2  # 0.19 ml tumor right of the image centre (39.5) but left of the body's (50)
    labels = labels.with_array(arr)
    assert body_midline_x(arr, image.array) == pytest.approx(50.0, abs=1.0)  # a kidney pokes out of the body
    assert measure(labels, image).tumor_side == "right"
    assert measure(labels, None).tumor_side == "left"  # no image: the image centre
    assert measure(labels.with_array(_phantom(tumor=False)[1].array), image).tumor_side == "none"


def test_choose_slices_goes_through_the_largest_tumor_cross_sections():
    _, labels = _phantom()
    (z, y, x), what = choose_slices(labels.array, None)
    assert (z, y, x) == (16, 26, 63) and "predicted tumor" in what
    (z, y, x), what = choose_slices(np.zeros_like(labels.array), labels.array)
    assert (z, y, x) == (16, 26, 63) and "ground-truth tumor" in what


def test_choose_slices_shows_a_missed_ground_truth_tumor_not_a_false_positive():
    _, labels = _phantom()
    gt = labels.array
    pred = np.where(gt == 2, 1, gt).astype(np.uint8)  # the real tumor missed...
    pred[10:13, 36:41, 18:23] = 2  # ...and a false-positive tumor (0.19 ml) in the right kidney
    (z, y, x), what = choose_slices(pred, gt, voxel_ml=labels.voxel_volume_ml)
    assert (z, y, x) == (16, 26, 63) and "missed" in what
    pred[16, 26, 63] = 2  # one voxel inside is not a predicted tumor (under 0.1 ml): still missed
    assert "missed" in choose_slices(pred, gt, voxel_ml=labels.voxel_volume_ml)[1]
    pred[15:18, 24:29, 61:66] = 2  # now a predicted tumor overlaps it: the planes follow the prediction
    assert "predicted tumor" in choose_slices(pred, gt, voxel_ml=labels.voxel_volume_ml)[1]


def test_tumor_counts_agree_between_measurements_and_metrics():
    """One tumor definition (kitseg.metrics.tumors): pieces under 0.1 ml are not tumors, in the report and
    in metrics.csv alike; a case whose only tumor was missed is a false negative despite false positives."""
    from kitseg.metrics import evaluate_case

    image, labels = _phantom()
    gt = labels.array
    pred = np.where(gt == 2, 1, gt).astype(np.uint8)
    pred[10:13, 36:41, 18:23] = 2  # a 0.19 ml false-positive tumor
    pred[5, 30, 20] = 2  # a 0.0025 ml speck: not a tumor anywhere
    pv = labels.with_array(pred)
    m = measure(pv, image)
    row = evaluate_case(pv, labels, distances=False)
    assert m.tumor_count == row.detection.pred_tumors == 1
    assert m.tumor_ml == pytest.approx(76 * labels.voxel_volume_ml)  # the speck still counts in the volume
    assert measure(labels, image).tumor_count == row.detection.gt_tumors == 1
    d = row.detection
    assert (d.detected_tumors, d.missed_tumors, d.false_positive_tumors, d.outcome) == (0, 1, 1, "FN")


def test_slice_numbers_follow_the_file_order(tmp_path):
    arr = np.zeros((5, 6, 7), np.uint8)
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # z -> inferior, like KiTS19
    write_volume(Volume.from_geometry(arr, direction=direction), tmp_path / "x.nii.gz")
    vol = read_volume(tmp_path / "x.nii.gz")
    assert vol.axis_codes == "SPL" and vol.source.axis_codes[0] == "I"
    assert file_slice_numbers(vol, (0, 0, 0)) == (5, 1, 1)
    assert file_slice_numbers(vol, (4, 2, 3)) == (1, 3, 4)


def _orange_centroid(fig, ax) -> tuple[float, float]:
    """Centroid of the tumor-coloured pixels inside ``ax``, relative to its centre, in [-0.5, 0.5] (x right, y up)."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    h = rgba.shape[0]
    bb = ax.get_window_extent()
    rows = slice(int(h - bb.y1), int(h - bb.y0))
    cols = slice(int(bb.x0), int(bb.x1))
    sub = rgba[rows, cols, :3].astype(int)
    hit = (sub[..., 0] > 200) & (abs(sub[..., 1] - 159) < 35) & (sub[..., 2] < 70)
    assert hit.sum() > 20, "no tumor contour drawn in this panel"
    r, c = np.argwhere(hit).mean(axis=0)
    return c / hit.shape[1] - 0.5, 0.5 - r / hit.shape[0]


def test_panels_are_in_radiological_orientation():
    image, labels = _phantom()
    m = measure(labels, image)
    fig = render_case(image, labels, None, m, None, "phantom")
    axial, coronal, sagittal = fig.axes[:3]
    assert axial.get_title().startswith("Axial") and sagittal.get_title().startswith("Sagittal")
    x, y = _orange_centroid(fig, axial)
    assert x > 0.15 and y > 0.05  # patient's left on the right of the picture, anterior at the top
    x, y = _orange_centroid(fig, coronal)
    assert x > 0.15 and y > 0.05  # left on the right, superior at the top
    x, y = _orange_centroid(fig, sagittal)
    assert x < -0.05 and y > 0.05  # anterior on the left, superior at the top


def _dataset(root, cases=(1, 2), cyst=False):
    for i in cases:
        image, labels = _phantom(tumor=i != 2)
        arr = labels.array
        if cyst:
            arr = arr.copy()
            arr[8:10, 30:33, 20:23] = 3
        write_volume(image, root / "data" / f"case_{i:05d}" / "imaging.nii.gz")
        write_volume(labels.with_array(arr), root / "data" / f"case_{i:05d}" / "segmentation.nii.gz")
        pred = arr.copy()
        pred[:, :, 60:] = np.where(pred[:, :, 60:] == 2, 1, pred[:, :, 60:])  # half the tumor missed
        write_volume(labels.with_array(pred), root / "pred" / f"case_{i:05d}.nii.gz")


def test_report_cli_writes_pngs_and_one_self_contained_page(tmp_path):
    _dataset(tmp_path)
    out = tmp_path / "report"
    code = main(["report", "--pred", str(tmp_path / "pred"), "--images", str(tmp_path / "data"),
                 "--gt", str(tmp_path / "data"), "-o", str(out)])
    assert code == 0
    for cid in ("case_00001", "case_00002"):
        assert (out / f"{cid}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3  # two cases + the box plots
    assert "Dice (prediction vs ground truth)" in page and "href='#case_00002'" in page
    assert "src=\"http" not in page and "<script" not in page  # nothing fetched from elsewhere
    rows = list(csv.DictReader((out / "measurements.csv").open()))
    assert rows[1]["gt_tumor_side"] == "none" and rows[0]["pred_tumor_side"] == "left"
    gt = read_label(tmp_path / "data" / "case_00001" / "segmentation.nii.gz")
    assert float(rows[0]["gt_tumor_ml"]) == pytest.approx(np.count_nonzero(gt.array == 2) * gt.voxel_volume_ml)
    assert 0 < float(rows[0]["dice_tumor"]) < 1


def test_report_without_ground_truth_and_with_cysts(tmp_path):
    _dataset(tmp_path, cases=(1,), cyst=True)
    page = make_report(tmp_path / "pred", tmp_path / "data", tmp_path / "r", spec=KITS23)
    html = page.read_text(encoding="utf-8")
    assert "Dice (prediction vs ground truth)" not in html and "cyst" in html
    rows = list(csv.DictReader((tmp_path / "r" / "measurements.csv").open()))
    assert float(rows[0]["pred_cyst_ml"]) == pytest.approx(2 * 3 * 3 * np.prod(SPACING) / 1000)


def test_report_refuses_a_case_without_image(tmp_path, capsys):
    _dataset(tmp_path, cases=(1,))
    image, labels = _phantom()
    write_volume(labels, tmp_path / "pred" / "case_00009.nii.gz")
    with pytest.raises(KitsegError, match="no CT image for case case_00009"):
        make_report(tmp_path / "pred", tmp_path / "data", tmp_path / "r")
    assert main(["report", "--pred", str(tmp_path / "pred"), "--images", str(tmp_path / "data"),
                 "-o", str(tmp_path / "r")]) == 2
    assert "case_00009" in capsys.readouterr().err
