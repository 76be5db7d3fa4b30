"""The fast NIfTI path of kitseg.io: one decompression straight into the array (ISA-L when installed),
label maps and images compressed by kitseg._gzip. It must give what ITK's reader gives, and write
files that every gzip reader (ITK, nibabel, the standard library) opens."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from kitseg import KitsegError, Volume, _gzip, io


def _itk(path):
    return io.from_sitk(sitk.ReadImage(str(path)), path)


def _no_itk_read(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the plain NIfTI should not go through sitk.ReadImage")

    monkeypatch.setattr(io.sitk, "ReadImage", refuse)


def _same(a: Volume, b: Volume):
    assert a.array.dtype == b.array.dtype and np.array_equal(a.array, b.array)
    assert np.array_equal(a.affine, b.affine) and a.source == b.source
    assert a.array.flags.c_contiguous and a.array.flags.writeable


def _oblique(rng, dtype=np.int16, shape=(7, 9, 11)) -> sitk.Image:
    img = sitk.GetImageFromArray((rng.normal(size=shape) * 100).astype(dtype))
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((-10.0, 20.0, 5.0))
    rot = sitk.VersorTransform((0.2, 0.1, 1.0), 0.4).GetMatrix()
    img.SetDirection(rot)
    return img


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_plain_nifti_read_equals_itk(tmp_path, rng, monkeypatch, ending, dtype):
    path = tmp_path / f"ct{ending}"
    sitk.WriteImage(_oblique(rng, dtype), str(path))
    expected = _itk(path)
    _no_itk_read(monkeypatch)
    _same(io.read_volume(path), expected)


def test_big_endian_and_kits19_like_affine(tmp_path, rng, monkeypatch):
    """nibabel writes big-endian when asked; KiTS19's (slices, 512, 512) layout with an I,P,L affine."""
    arr = rng.integers(-1000, 2000, size=(6, 8, 10)).astype(">i2")
    affine = np.array([[0, 0, -2.5, 0], [0, -0.8, 0, 0], [-0.8, 0, 0, 0], [0, 0, 0, 1.0]])
    path = tmp_path / "be.nii.gz"
    hdr = nib.Nifti1Header(endianness=">")
    nib.save(nib.Nifti1Image(arr, affine, hdr), path)
    assert nib.load(path).header.endianness == ">"
    expected = _itk(path)
    _no_itk_read(monkeypatch)
    _same(io.read_volume(path), expected)


def test_scaled_and_4d_niftis_go_through_itk(tmp_path, rng):
    """Intensity scaling (ITK applies it) and a 4D file with one volume are not plain: same as before."""
    arr = rng.integers(0, 100, size=(5, 6, 7)).astype(np.int16)
    scaled = tmp_path / "scaled.nii.gz"
    img = nib.Nifti1Image(arr, np.diag([0.7, 0.7, 3.0, 1.0]))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, scaled)
    vol = io.read_volume(scaled)
    np.testing.assert_allclose(vol.array, _itk(scaled).array)
    assert vol.array.min() >= -1024.0 and vol.array.dtype != np.int16
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(arr[..., None], np.eye(4)), four)
    assert io.read_volume(four).shape == io.read_volume(scaled).shape


def test_check_finite_false_keeps_itks_nan_behaviour(tmp_path):
    arr = np.ones((4, 5, 6), np.float32)
    arr[1, 2, 3] = np.nan
    path = tmp_path / "nan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    with pytest.raises(KitsegError, match="1 voxels are NaN or Inf"):
        io.read_volume(path)
    np.testing.assert_array_equal(io.read_volume(path, check_finite=False).array, _itk(path).array)


def test_truncated_plain_nifti_is_refused(tmp_path, rng):
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(_oblique(rng), str(path))
    whole = gzip.decompress(path.read_bytes())
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(whole[:-100]))  # a valid gzip stream, too few voxels
    with pytest.raises(KitsegError, match=r"truncated: the header claims 11 x 9 x 7 voxels .* holds \d+ bytes"):
        io.read_volume(short)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(path.read_bytes()[:-20])  # the gzip stream itself is cut
    with pytest.raises(KitsegError, match="corrupt or truncated gzip stream"):
        io.read_volume(cut)


@pytest.mark.parametrize("isal", [True, False])
def test_written_niigz_is_a_standard_gzip_that_every_reader_opens(tmp_path, rng, monkeypatch, isal):
    if isal and not _gzip.HAVE_ISAL:
        pytest.skip("python-isal is not installed")
    monkeypatch.setattr(_gzip, "HAVE_ISAL", isal)
    vol = io.from_sitk(_oblique(rng, np.int16, (12, 13, 14)), "ct.nii.gz")
    out = io.write_volume(vol, tmp_path / "out.nii.gz")
    labels = io.write_volume(vol.with_array((vol.array > 0).astype(np.uint8)), tmp_path / "labels.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz", "out.nii.gz"]  # no temporaries left
    for path, v in ((out, vol), (labels, vol.with_array((vol.array > 0).astype(np.uint8)))):
        assert gzip.decompress(path.read_bytes())[:4] == np.int32(348).tobytes()  # the standard library
        _same(_itk(path), io.read_volume(path))  # ITK, and our fast path
        np.testing.assert_array_equal(io.read_volume(path).array, v.array)
        nii = nib.load(path)  # nibabel: same voxels in the file's own (x, y, z) order
        np.testing.assert_array_equal(np.asarray(nii.dataobj).transpose(2, 1, 0), sitk.GetArrayFromImage(
            sitk.ReadImage(str(path))))
