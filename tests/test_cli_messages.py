"""What the commands print: kitseg info's geometry as other tools show it, quiet ITK, empty folders."""

from __future__ import annotations

import re

import numpy as np
import SimpleITK as sitk

from kitseg.cli.main import main


def _oblique_file(path):
    img = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    img.SetSpacing((0.7, 0.8, 3.304))
    img.SetOrigin((12.5, -30.25, 100.0))
    img.SetDirection((0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))  # a non-axial, flipped layout
    sitk.WriteImage(img, str(path))
    return img


def _tuple(line: str, label: str) -> tuple[float, ...]:
    m = re.search(re.escape(label) + r"\s+\(([^)]*)\)", line)
    assert m, line
    return tuple(float(v) for v in m.group(1).split(","))


def test_info_prints_the_files_own_origin_direction_and_labels_each_axis_order(tmp_path, capsys):
    img = _oblique_file(tmp_path / "x.nrrd")
    assert main(["info", str(tmp_path / "x.nrrd")]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0] + (" " + ln.split()[1] if ln.startswith("file") else ""): ln for ln in out.splitlines()}
    assert np.allclose(_tuple(lines["file origin"], "file origin"), img.GetOrigin())  # what ITK and Slicer show
    assert "(x, y, z) LPS" in lines["file origin"] and "(-12.5, 30.25, 100) mm RAS" in lines["file origin"]
    assert np.allclose(_tuple(lines["file spacing"], "file spacing"), img.GetSpacing())
    rows = re.findall(r"\(([^)]*)\)", lines["direction"])[:3]
    assert np.allclose([float(v) for r in rows for v in r.split(",")], img.GetDirection())
    assert "3.304" in out and "3.3040000" not in out  # rounded for reading
    for line in out.splitlines():  # every tuple says its axis order
        if "(" in line and line.split()[0] not in ("file", "intensity", "labels"):
            assert re.search(r"\((z, y, x|i, j, k|x, y, z)\)|LPS rows", line), line


def test_empty_folders_give_one_line_naming_the_input_and_no_itk_warning(tmp_path, capfd):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["info", str(empty)]) == 2
    err = capfd.readouterr().err
    assert err.strip() == f"kitseg: error: {empty}: no DICOM series in this folder"
    assert main(["predict", "-i", str(empty), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "run")]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "WARNING" not in err and f"{empty}: empty folder" in err


def test_reading_a_folder_without_dicom_is_quiet_in_the_python_api_too(tmp_path, capfd):
    import pytest

    from kitseg.errors import KitsegError
    from kitseg.io import read_volume

    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(KitsegError, match="no DICOM series"):
        read_volume(tmp_path)
    assert "WARNING" not in capfd.readouterr().err
    assert sitk.ProcessObject.GetGlobalWarningDisplay()  # the caller's setting is restored


def test_dataset_median_spacing_is_rounded(tmp_path, capsys):
    for i, sz in enumerate((3.304, 3.304, 2.5)):
        img = sitk.Image([4, 4, 3], sitk.sitkUInt8)
        img.SetSpacing((0.781, 0.781, sz))
        (tmp_path / f"case_{i:05d}").mkdir()
        sitk.WriteImage(img, str(tmp_path / f"case_{i:05d}" / "segmentation.nii.gz"))
    assert main(["info", str(tmp_path)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("median sp."))
    assert "(0.781, 0.781, 3.304) mm (file axes i, j, k)" in line
