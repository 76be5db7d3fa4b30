"""Geometry-exact reading and writing of NIfTI, NRRD, MHA/MHD, DICOM series and in-memory images."""

from __future__ import annotations

import itertools
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import kits19_label, shared_path
from kitseg import Volume
from kitseg.io import read_label, read_volume, write_volume
from kitseg.volume import reorient

# case_00005 is the largest KiTS19 volume (834 x 512 x 512); the others span the slice spacings.
KITS_CASES = [5, 0, 2, 66, 95, 40, 16, 6, 19, 4, 61]


@pytest.mark.parametrize("case", KITS_CASES)
def test_kits19_roundtrip_is_exact(case, tmp_path):
    src = kits19_label(case)
    vol = read_label(src, {0, 1, 2})
    assert vol.axis_codes == "SPL"
    out = write_volume(vol, tmp_path / "pred.nii.gz")
    a, b = nib.load(src), nib.load(out)
    assert b.shape == a.shape
    assert nib.aff2axcodes(b.affine) == nib.aff2axcodes(a.affine) == ("I", "P", "L")
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(src))))
    again = read_volume(out)
    np.testing.assert_array_equal(again.array, vol.array)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-6)


def test_kits19_canonical_array_matches_physical_axes():
    vol = read_label(kits19_label(61))
    nii = nib.load(kits19_label(61))
    # nibabel axis 0 points Inferior: our z (Superior) is that axis reversed.
    np.testing.assert_array_equal(vol.array, _nib_to_canonical(nii))
    assert vol.spacing == pytest.approx((5.0, 0.9765625, 0.9765625))


def _nib_to_canonical(nii) -> np.ndarray:
    """Independent route: nibabel's RAS codes -> our (S, P, L) order via nibabel's own orientation tools."""
    ornt = nib.orientations.ornt_transform(nib.io_orientation(nii.affine),
                                           nib.orientations.axcodes2ornt(("S", "P", "L")))
    return nib.orientations.apply_orientation(np.asarray(nii.dataobj), ornt)


def test_real_ct_ras_roundtrip(tmp_path):
    src = shared_path("data", "real_ct", "example_ct.nii.gz")
    vol = read_volume(src)
    assert vol.source.itk_orientation == "RAS"
    np.testing.assert_array_equal(vol.array, _nib_to_canonical(nib.load(src)))
    out = write_volume(vol.with_array((vol.array > 100).astype(np.uint8)), tmp_path / "mask.nii.gz")
    a, b = nib.load(src), nib.load(out)
    assert b.shape == a.shape and nib.aff2axcodes(b.affine) == ("R", "A", "S")
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)


def test_dicom_series_reads_with_geometry_and_writes_back(tmp_path):
    folder = shared_path("data", "real_ct", "dicom_series")
    vol = read_volume(folder)
    assert vol.shape == (20, 512, 512)
    assert vol.spacing == pytest.approx((2.0, 0.9765625, 0.9765625), abs=1e-4)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    ref = reader.Execute()
    out = write_volume(vol, tmp_path / "ct.nii.gz")
    img = sitk.ReadImage(str(out))
    assert img.GetSize() == ref.GetSize()
    np.testing.assert_allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(img.GetDirection(), ref.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ref))


def _oblique_image(rng) -> sitk.Image:
    arr = rng.integers(-1000, 1000, size=(7, 9, 11)).astype(np.int16)  # numpy (k, j, i)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.7, 2.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    a = np.deg2rad(20)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    perm = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]])  # a non-axial, flipped layout
    img.SetDirection((rot @ perm).ravel().tolist())
    return img


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_formats_roundtrip_oblique(ending, tmp_path, rng):
    img = _oblique_image(rng)
    path = tmp_path / f"x{ending}"
    sitk.WriteImage(img, str(path))
    vol = read_volume(path)
    out = write_volume(vol, tmp_path / f"y{ending}")
    back = sitk.ReadImage(str(out))
    assert back.GetSize() == img.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name or p.name.startswith(".")]


def test_in_memory_inputs_are_equivalent(tmp_path, rng):
    img = _oblique_image(rng)
    sitk.WriteImage(img, str(tmp_path / "x.nii.gz"))
    from_file = read_volume(tmp_path / "x.nii.gz")
    from_sitk = read_volume(img)
    from_nib = read_volume(nib.load(tmp_path / "x.nii.gz"))
    assert read_volume(from_file) is from_file
    for v in (from_sitk, from_nib):
        np.testing.assert_array_equal(v.array, from_file.array)
        np.testing.assert_allclose(v.affine, from_file.affine, atol=1e-4)


def test_reorient_preserves_every_voxels_position(rng):
    vol = Volume.from_geometry(rng.random((3, 4, 5)), spacing=(2.0, 0.5, 0.7), origin=(1, 2, 3))
    pts = np.array(list(itertools.product(range(3), range(4), range(5))))
    world = vol.index_to_world(pts)
    values = vol.array[tuple(pts.T)]
    for perm in itertools.permutations("LPS"):
        for flips in itertools.product([0, 1], repeat=3):
            codes = "".join({"L": "R", "P": "A", "S": "I"}[c] if f else c for c, f in zip(perm, flips))
            r = reorient(vol, codes)
            assert r.axis_codes == codes
            idx = np.rint(np.linalg.solve(r.affine[:3, :3], (world - r.affine[:3, 3]).T).T).astype(int)
            np.testing.assert_array_equal(r.array[tuple(idx.T)], values)
            back = reorient(r, "SPL")
            np.testing.assert_array_equal(back.array, vol.array)
            np.testing.assert_allclose(back.affine, vol.affine, atol=1e-9)


def test_volume_derived_geometry():
    v = Volume.from_geometry(np.zeros((2, 3, 4)), spacing=(3.0, 0.5, 0.25), origin=(1, 2, 3))
    assert v.spacing == (3.0, 0.5, 0.25) and v.origin == (1.0, 2.0, 3.0)
    assert v.voxel_volume_ml == pytest.approx(3 * 0.5 * 0.25 / 1000)
    with pytest.raises(ValueError):
        v.with_array(np.zeros((2, 3, 5)))
    with pytest.raises(ValueError):
        Volume(np.zeros((2, 3)))


def test_write_failure_keeps_existing_output(tmp_path):
    """A write that fails (file-size limit) raises a clear error and leaves the old file intact."""
    target = tmp_path / "pred.nii.gz"
    write_volume(Volume.from_geometry(np.ones((2, 3, 4), np.uint8)), target)
    before = target.read_bytes()
    code = f"""
import resource, numpy as np
from kitseg import KitsegError, Volume
from kitseg.io import write_volume
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
big = Volume.from_geometry(np.random.default_rng(0).integers(0, 255, (64, 64, 64)).astype(np.uint8))
try:
    write_volume(big, {str(target)!r})
except KitsegError as exc:
    print("KITSEG", exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "KITSEG" in out.stdout and "pred.nii.gz" in out.stdout, out.stdout + out.stderr
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["pred.nii.gz"]
