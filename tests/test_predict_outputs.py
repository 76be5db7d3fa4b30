"""What `kitseg predict` writes besides the label file: per-case statistics, DICOM-SEG, Slicer .seg.nrrd."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_path
from dicom_series import repaired_copy, write_ct_series
from kitseg.cli.main import main
from kitseg.errors import KitsegError
from kitseg.export import write_labels
from kitseg.io import write_volume
from kitseg.stats import CaseStatistics, case_statistics
from kitseg.volume import Volume


def _ct(path, seed=0, shape=(20, 36, 40)):
    rng = np.random.default_rng(seed)
    arr = rng.normal(-100, 50, shape).astype(np.int16)
    direction = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])  # y flipped: not canonical
    return write_volume(Volume.from_geometry(arr, (2.5, 0.9, 0.8), (12.0, -40.0, 3.5), direction), path)


def test_statistics_beside_each_label_file(tiny_run, tmp_path, capsys):
    for i in range(2):
        _ct(tmp_path / "in" / f"case{i}.nii.gz", seed=i)
    args = ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(tiny_run)]
    assert main(args) == 0, capsys.readouterr().err
    assert not (tmp_path / "out" / "case0.json").exists()
    capsys.readouterr()
    assert main([*args, "--statistics"]) == 0  # the statistics were not there: the cases are done again
    assert "2 predicted" in capsys.readouterr().out
    for i in range(2):
        written = CaseStatistics.model_validate_json((tmp_path / "out" / f"case{i}.json").read_text(encoding="utf-8"))
        expected = case_statistics(tmp_path / "out" / f"case{i}.nii.gz", tmp_path / "in" / f"case{i}.nii.gz",
                                   case_id=f"case{i}")
        assert written.model_dump() == expected.model_dump() and written.midline == "body"
        assert json.loads((tmp_path / "out" / f"case{i}.json").read_text(encoding="utf-8"))["schema_version"] == 1
    assert main([*args, "--statistics"]) == 0 and "2 already done" in capsys.readouterr().out
    single = tmp_path / "one" / "seg.nii.gz"
    assert main(["predict", "-i", str(tmp_path / "in" / "case0.nii.gz"), "-o", str(single), "--model", str(tiny_run),
                 "--statistics"]) == 0
    assert (tmp_path / "one" / "seg.json").is_file()


# ---------------------------------------------------------------------------------------------
# DICOM-SEG and 3D Slicer .seg.nrrd
# ---------------------------------------------------------------------------------------------
def _series(tmp_path, name="series", shape=(12, 30, 40)):
    rng = np.random.default_rng(1)
    return write_ct_series(tmp_path / name, rng.integers(-200, 300, shape).astype(np.int16), row_dir=(-1.0, 0.0, 0.0))


def seg_as_series_array(seg_path, series_folder) -> np.ndarray:
    """Rebuild the label array (file index, row, column) from a DICOM-SEG by mapping each frame to its source
    slice through the referenced SOP Instance UID, checking the frame's position against that slice."""
    import highdicom as hd
    import pydicom

    from kitseg.io import dicom_series_files

    files = dicom_series_files(series_folder)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    index = {ds.SOPInstanceUID: k for k, ds in enumerate(sources)}
    seg = hd.seg.segread(seg_path)
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    refs = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert refs <= set(index) and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    out = np.zeros((len(files), sources[0].Rows, sources[0].Columns), np.uint8)
    pixels = seg.pixel_array.reshape(-1, sources[0].Rows, sources[0].Columns)
    for i, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        k = index[uid]
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position], [float(v) for v in sources[k].ImagePositionPatient],
                                   atol=1e-3)
        assert not (out[k][pixels[i] > 0]).any(), "segments overlap"
        out[k][pixels[i] > 0] = number
    return out


def test_dicom_seg_has_the_nifti_voxels_and_the_coded_segments(tmp_path):
    import highdicom as hd

    from kitseg import __version__
    from kitseg.datasets import KITS23
    from kitseg.io import read_volume

    folder = _series(tmp_path)
    ct = read_volume(folder)
    assert ct.source.axis_codes == "IPR"  # slices stored inferior-first, columns toward the patient's right
    lab = np.zeros(ct.shape, np.uint8)
    lab[2:8, 5:20, 5:15] = 1
    lab[3:5, 8:12, 6:10] = 2
    lab[6, 15:18, 20:30] = 3
    labels = ct.with_array(lab)
    write_labels(labels, tmp_path / "seg.dcm", spec=KITS23, source=folder, recipe="kitseg_cascade")
    write_labels(labels, tmp_path / "seg.nii.gz")
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii.gz")))  # the series' own layout
    np.testing.assert_array_equal(seg_as_series_array(tmp_path / "seg.dcm", folder), nifti)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    names = [s.SegmentLabel for s in seg.SegmentSequence]
    assert names == ["Kidney", "Kidney tumor", "Kidney cyst"]
    kidney, tumor, cyst = seg.SegmentSequence
    assert (kidney.SegmentedPropertyTypeCodeSequence[0].CodeValue, kidney.SegmentedPropertyCategoryCodeSequence[0]
            .CodeMeaning) == ("64033007", "Anatomical Structure")
    assert tumor.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Neoplasm"
    assert tumor.AnatomicRegionSequence[0].CodeValue == "64033007"
    assert cyst.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Cyst" and tumor.SegmentAlgorithmType == "AUTOMATIC"
    algo = tumor.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("kitseg", __version__)
    assert "kitseg_cascade" in algo.AlgorithmParameters and seg.ManufacturerModelName == "kitseg_cascade"


def test_predict_writes_dicom_seg_and_slicer_nrrd_aligned_with_the_nifti(tiny_run, tmp_path, capsys):
    import nrrd

    folder = _series(tmp_path / "in")
    base = ["predict", "-i", str(folder), "--model", str(tiny_run)]
    assert main([*base, "-o", str(tmp_path / "seg.nii.gz")]) == 0, capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "seg.dcm")]) == 0, capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "seg.seg.nrrd"), "--statistics"]) == 0, capsys.readouterr().err
    nifti = sitk.ReadImage(str(tmp_path / "seg.nii.gz"))
    np.testing.assert_array_equal(seg_as_series_array(tmp_path / "seg.dcm", folder), sitk.GetArrayFromImage(nifti))
    seg_nrrd = sitk.ReadImage(str(tmp_path / "seg.seg.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seg_nrrd), sitk.GetArrayFromImage(nifti))
    for get in ("GetOrigin", "GetDirection", "GetSpacing"):
        np.testing.assert_allclose(getattr(seg_nrrd, get)(), getattr(nifti, get)(), atol=1e-4)
    _, header = nrrd.read(str(tmp_path / "seg.seg.nrrd"))
    assert (header["Segment0_Name"], header["Segment1_Name"]) == ("Kidney", "Kidney tumor")
    assert header["Segment1_Color"] == "0.901961 0.623529 0" and header["Segment1_LabelValue"] == "2"
    assert "SCT^108369006^Neoplasm" in header["Segment1_Tags"] and (tmp_path / "seg.json").is_file()
    # a folder of DICOM series with --format dicom-seg: OUT/<series>.dcm
    assert main([*base[:2], str(tmp_path / "in"), *base[3:], "-o", str(tmp_path / "out"), "--format",
                 "dicom-seg"]) == 0
    assert (tmp_path / "out" / "series.dcm").is_file() and "1 predicted" in capsys.readouterr().out


def test_dicom_seg_format_errors_are_one_line(tiny_run, tmp_path, capsys):
    ct = _ct(tmp_path / "ct.nii.gz")
    args = ["predict", "-i", str(ct), "--model", str(tiny_run)]
    assert main([*args, "-o", str(tmp_path / "out"), "--format", "dicom-seg"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{ct}: --format dicom-seg needs a DICOM series folder" in err
    assert main([*args, "-o", str(tmp_path / "seg.dcm")]) == 2
    assert "needs a DICOM series folder" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "seg.nii.gz"), "--format", "nrrd"]) == 2
    assert "the file name asks for nifti but --format says nrrd" in capsys.readouterr().err
    assert not list(tmp_path.glob("seg*")) and not (tmp_path / "out").exists()


def test_real_dicom_series_round_trip(tmp_path):
    from kitseg.io import read_volume

    src = shared_path("data", "real_ct", "dicom_series")
    ct = read_volume(src)
    labels = ct.with_array(((ct.array > 150).astype(np.uint8) + (ct.array > 600)).astype(np.uint8))
    with pytest.raises(KitsegError, match="has no StudyInstanceUID, SeriesInstanceUID"):
        write_labels(labels, tmp_path / "x.dcm", source=src)  # this anonymized series cannot be referenced
    assert not list(tmp_path.iterdir())
    fixed = repaired_copy(src, tmp_path / "fixed")
    write_labels(labels, tmp_path / "seg.dcm", source=fixed, recipe="test")
    write_labels(labels, tmp_path / "seg.nii.gz")
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii.gz")))
    assert nifti.max() == 2
    np.testing.assert_array_equal(seg_as_series_array(tmp_path / "seg.dcm", fixed), nifti)
