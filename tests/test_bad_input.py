"""Every kind of bad input gets a clear one-line KitsegError naming the file (exit code 2 in the CLI)."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from kitseg import KitsegError
from kitseg.cli.main import main
from kitseg.datasets import Case
from kitseg.io import read_label, read_volume


def _nii(path, arr, affine=None):
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return path


def _expect(path, match):
    with pytest.raises(KitsegError, match=match) as info:
        read_volume(path)
    assert str(path) in str(info.value)


def test_missing_path(tmp_path):
    _expect(tmp_path / "nope.nii.gz", "no such file")


def test_truncated_gzip(tmp_path, rng):
    good = _nii(tmp_path / "good.nii.gz", rng.normal(size=(20, 20, 20)).astype(np.float32))
    data = good.read_bytes()
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    _expect(bad, "truncated|corrupt|not a readable")


def test_corrupt_gzip(tmp_path, rng):
    bad = tmp_path / "noise.nii.gz"
    bad.write_bytes(gzip.compress(b"\x00" * 100)[:10] + rng.bytes(5000))
    _expect(bad, "corrupt|not a readable|could not be read")


def test_not_an_image(tmp_path):
    txt = tmp_path / "notes.nii"
    txt.write_text("this is not an image\n" * 50)
    _expect(txt, "not a readable image|could not be read")
    other = tmp_path / "table.csv"
    other.write_text("a,b\n1,2\n")
    _expect(other, "not an image file")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    _expect(empty, "empty")


def test_2d_and_4d_refused(tmp_path, rng):
    _expect(_nii(tmp_path / "flat.nii.gz", rng.normal(size=(20, 20)).astype(np.float32)), "expected a 3D image")
    _expect(_nii(tmp_path / "time.nii.gz", rng.normal(size=(8, 8, 8, 3)).astype(np.float32)),
            "expected a 3D image")
    # a 4D file with one time point is a 3D volume
    vol = read_volume(_nii(tmp_path / "one.nii.gz", rng.normal(size=(8, 8, 8, 1)).astype(np.float32)))
    assert vol.shape == (8, 8, 8)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_refused(tmp_path, rng, bad):
    arr = rng.normal(size=(10, 10, 10)).astype(np.float32)
    arr[3, 4, 5] = bad
    path = tmp_path / "nan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))  # nibabel would write NaN as 0
    _expect(path, "1 voxels are NaN or Inf")


def test_label_values_outside_label_set(tmp_path):
    arr = np.zeros((10, 10, 10), np.uint8)
    arr[1, 1, 1], arr[2, 2, 2] = 2, 7
    path = _nii(tmp_path / "seg.nii.gz", arr)
    with pytest.raises(KitsegError, match=r"values \{0,2,7\}; expected \{0,1,2\}"):
        read_label(path, {0, 1, 2})
    arr = np.full((4, 4, 4), 0.5, np.float32)
    with pytest.raises(KitsegError, match="non-integer"):
        read_label(_nii(tmp_path / "soft.nii.gz", arr))


def test_image_label_shape_and_geometry_mismatch(tmp_path, rng):
    img = _nii(tmp_path / "img.nii.gz", rng.normal(size=(10, 10, 10)).astype(np.float32))
    lab_shape = _nii(tmp_path / "lab1.nii.gz", np.zeros((10, 10, 9), np.uint8))
    with pytest.raises(KitsegError, match="shapes differ"):
        Case("c", img, lab_shape).load()
    lab_geo = _nii(tmp_path / "lab2.nii.gz", np.zeros((10, 10, 10), np.uint8), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(KitsegError, match="geometry differs"):
        Case("c", img, lab_geo).load()


def _write_dicom_series(folder, uid, n=3):
    for i in range(n):
        img = sitk.GetImageFromArray(np.full((1, 8, 8), i, np.int16))
        for tag, value in {"0020|000e": uid, "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0008|0060": "CT",
                           "0020|0032": f"0\\0\\{i}", "0020|0037": "1\\0\\0\\0\\1\\0",
                           "0020|0013": str(i)}.items():
            img.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"{uid}_{i}.dcm"))
        writer.Execute(img)


def test_empty_dicom_folder_and_several_series(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect(empty, "no DICOM series")
    two = tmp_path / "two"
    two.mkdir()
    _write_dicom_series(two, "1.2.826.0.1.3680043.2.1125.11")
    one = read_volume(two)
    assert one.shape == (3, 8, 8) and one.array[2].max() == 2
    _write_dicom_series(two, "1.2.826.0.1.3680043.2.1125.12")
    _expect(two, "holds 2 DICOM series")


def test_absurd_header_refused_before_allocating(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((20000, 20000, 20000))
    path = tmp_path / "huge.nii"
    with open(path, "wb") as fh:
        hdr.write_to(fh)
        fh.write(b"\x00" * 1024)
    _expect(path, "absurd dimensions|not a readable")


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kitseg: error:") and str(bad) in err
    assert "\n" not in err and "Traceback" not in err
