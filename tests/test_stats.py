"""Per-case statistics (kitseg.stats) on hand-made label maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from kitseg.datasets import KITS23
from kitseg.stats import case_statistics, outside_hull_fraction, renal_e, renal_l, renal_r, statistics_path
from kitseg.volume import Volume, reorient


def _labels(cyst: bool = False) -> Volume:
    """1 mm voxels, (z, y, x) = (100, 80, 120); x points to the patient's left, z up (canonical).

    Right kidney: box z 20-79, y 30-49, x 20-39 (24 ml); left kidney: x 80-99 (24 ml). Tumors:
    A  left, upper third, inside the kidney (endophytic): z 65-74, y 35-44, x 85-94 (1.0 ml);
    B  right, middle third, 10 of 12 columns lateral to the kidney (exophytic): z 45-54, x 10-21 (1.2 ml);
    C  left, lower third crossing the lower third line, 3 of 8 columns outside: z 33-44, x 95-102 (0.96 ml);
    a one-voxel speck in the right kidney (not a tumor: under 0.1 ml) and, for KiTS23, a 5 mm cube cyst.
    """
    arr = np.zeros((100, 80, 120), np.uint8)
    arr[20:80, 30:50, 20:40] = 1
    arr[20:80, 30:50, 80:100] = 1
    arr[65:75, 35:45, 85:95] = 2  # A
    arr[45:55, 35:45, 10:22] = 2  # B
    arr[33:45, 35:45, 95:103] = 2  # C
    arr[25, 40, 30] = 2  # speck
    if cyst:
        arr[60:65, 32:37, 25:30] = 3
    return Volume.from_geometry(arr, spacing=(1.0, 1.0, 1.0), origin=(-60.0, -40.0, 0.0))


def test_case_statistics_on_a_hand_made_label_map():
    s = case_statistics(_labels(), case_id="c1")
    assert s.midline == "image centre" and s.tumor_count == 3 and s.cyst_ml is None
    assert s.kidney_ml == pytest.approx({"right": 24.0 + 1.0, "left": 24.0 + 0.36})
    assert s.kidney_tissue_ml == pytest.approx({"right": 24.0 - 0.2 - 0.001, "left": 24.0 - 1.0 - 0.6})
    assert s.tumor_ml == pytest.approx(1.2 + 1.0 + 0.96 + 0.001)  # the speck counts in the volume only
    b, a, c = s.tumors  # largest first
    assert [t.volume_ml for t in (b, a, c)] == pytest.approx([1.2, 1.0, 0.96])
    assert (a.side, a.pole, a.growth, a.exophytic_fraction) == ("left", "upper", "endophytic", 0.0)
    assert a.max_diameter_mm == pytest.approx(9 * np.sqrt(3))
    assert (a.renal.R, a.renal.E, a.renal.L) == (1, 3, 1)
    assert (b.side, b.pole, b.growth) == ("right", "middle", "exophytic")
    assert b.exophytic_fraction == pytest.approx(10 / 12)
    assert (b.renal.R, b.renal.E, b.renal.L) == (1, 1, 3)  # entirely between the third lines: L 3
    assert (c.side, c.pole, c.growth) == ("left", "lower", "partly exophytic")
    assert c.exophytic_fraction == pytest.approx(3 / 8)
    assert (c.renal.R, c.renal.E, c.renal.L) == (1, 2, 2)  # crosses the lower line, 5 of 12 slices between
    # centroid in patient LPS mm: x = -60 + index, z = index
    assert a.centroid_mm == pytest.approx((-60 + 89.5, -40 + 39.5, 69.5))
    assert "automatic approximations" in s.renal_note


def test_statistics_do_not_depend_on_the_file_orientation():
    vol = _labels()
    flipped = reorient(vol, "IAR", source=None)  # same voxels in space, another array layout
    assert flipped.axis_codes == "IAR"
    a, b = case_statistics(vol), case_statistics(flipped)
    assert b.kidney_ml == pytest.approx(a.kidney_ml) and b.tumor_ml == pytest.approx(a.tumor_ml)
    for ta, tb in zip(a.tumors, b.tumors, strict=True):
        da, db = ta.model_dump(), tb.model_dump()
        for key in ("centroid_mm", "max_diameter_mm", "exophytic_fraction", "volume_ml"):
            assert da.pop(key) == pytest.approx(db.pop(key))
        assert da == db  # side, pole, growth, RENAL parts
    assert [t.side for t in b.tumors] == ["right", "left", "left"]


def test_cysts_and_body_midline():
    s = case_statistics(_labels(cyst=True), spec=KITS23)
    assert s.cyst_ml == pytest.approx(0.125) and s.label_set == "KiTS23"
    assert s.kidney_tissue_ml["right"] == pytest.approx(24.0 - 0.2 - 0.001 - 0.125)
    # a CT whose body lies right of the image centre moves the midline: x < 70 is now the right side
    ct = np.full((100, 80, 120), -1000, np.int16)
    ct[:, 10:70, 20:120] = 40  # body spans x 20-119: centroid 69.5
    s2 = case_statistics(_labels(), Volume.from_geometry(ct, origin=(-60.0, -40.0, 0.0)))
    assert s2.midline == "body"
    assert s2.kidney_ml["left"] == pytest.approx(24.36) and s2.kidney_ml["right"] == pytest.approx(25.0)


def test_no_tumor_and_renal_thresholds():
    arr = _labels().array.copy()
    arr[arr == 2] = 1
    s = case_statistics(Volume.from_geometry(arr))
    assert s.tumor_count == 0 and s.tumors == [] and s.tumor_ml == 0.0
    assert [renal_r(d) for d in (40.0, 40.1, 69.9, 70.0)] == [1, 2, 2, 3]
    assert [renal_e(f) for f in (0.5, 0.49, 0.03, 0.0)] == [1, 2, 2, 3]
    z = np.arange(0.0, 10.0)
    assert renal_l(z + 70, 0.0, 90.0) == 1 and renal_l(z + 58, 0.0, 90.0) == 2 and renal_l(z + 40, 0.0, 90.0) == 3
    assert renal_l(np.arange(50.0, 70.0), 0.0, 90.0) == 3  # > half between the lines


def test_outside_hull_fraction():
    cube = np.array([[x, y, z] for x in (0, 10) for y in (0, 10) for z in (0, 10)], float)
    pts = np.array([[5, 5, 5], [20, 5, 5], [5, 5, 11], [1, 1, 1]], float)
    assert outside_hull_fraction(pts, cube) == pytest.approx(0.5)
    assert outside_hull_fraction(pts, cube[:4]) == 1.0  # a flat "kidney" holds nothing


def test_statistics_path():
    assert statistics_path("out/case_00001.nii.gz").name == "case_00001.json"
    assert statistics_path("out/seg.seg.nrrd").name == "seg.json"
