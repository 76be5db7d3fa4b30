"""Predictions written to files: the input's exact geometry (KiTS19, RAS, DICOM), folders that skip,
survive bad inputs, shard over torchrun ranks and resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import kits19_label, shared_path
from inference_runs import GEOMETRY_RECIPE, recipe_from_yaml, write_run
from kitseg.errors import KitsegError
from kitseg.inference import load_run, predict, predict_file, predict_folder
from kitseg.inference.folder import shard
from kitseg.io import write_volume
from kitseg.volume import Volume
from synthetic_kits import make_case

REPO = Path(__file__).resolve().parents[1]


def _synthetic_ct(shape=(24, 40, 40), spacing=(3.0, 1.5, 1.5), seed=0) -> Volume:
    img, _ = make_case(shape, seed)
    return Volume.from_geometry(img, spacing=spacing, origin=(10.0, -20.0, 30.0))


# ---------------------------------------------------------------------------------------------
# Geometry of written predictions: KiTS19 (I,P,L), RAS and a DICOM series
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def geometry_run(tmp_path_factory):
    return load_run(write_run(tmp_path_factory.mktemp("run"), recipe_from_yaml(GEOMETRY_RECIPE)))


def _same_nifti_geometry(a: Path, b: Path):
    na, nb = nib.load(a), nib.load(b)
    assert na.shape == nb.shape
    assert nib.aff2axcodes(na.affine) == nib.aff2axcodes(nb.affine)
    np.testing.assert_allclose(na.affine, nb.affine, atol=1e-4)


def test_kits19_prediction_has_the_input_geometry(geometry_run, tmp_path):
    src = kits19_label(61)  # a real KiTS19 file (29 x 512 x 512, I,P,L) used as a fake CT
    out = predict_file(src, tmp_path / "case_00061.nii.gz", geometry_run)
    _same_nifti_geometry(src, out)
    assert nib.aff2axcodes(nib.load(out).affine) == ("I", "P", "L")
    assert nib.load(out).get_data_dtype() == np.uint8


def test_ras_prediction_has_the_input_geometry(geometry_run, tmp_path):
    src = shared_path("data", "real_ct", "example_ct.nii.gz")
    out = predict_file(src, tmp_path / "ct.nii.gz", geometry_run, save_probabilities=True)
    _same_nifti_geometry(src, out)
    probs = np.load(tmp_path / "ct_probabilities.npz")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert probs["probabilities"].shape == (3, *labels.shape)
    assert list(probs["classes"]) == ["background", "kidney", "tumor"]
    np.testing.assert_array_equal(probs["probabilities"].argmax(0)[labels == 2], 2)


def test_dicom_prediction_has_the_series_geometry(geometry_run, tmp_path):
    src = shared_path("data", "real_ct", "dicom_series")
    out = predict_file(src, tmp_path / "dicom.nii.gz", geometry_run)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(src)))
    series, pred = reader.Execute(), sitk.ReadImage(str(out))
    assert pred.GetSize() == series.GetSize()
    np.testing.assert_allclose(pred.GetSpacing(), series.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(pred.GetOrigin(), series.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(pred.GetDirection(), series.GetDirection(), atol=1e-5)


def test_python_api_takes_paths_volumes_and_sitk_images(geometry_run, tmp_path):
    ct = _synthetic_ct()
    by_volume = predict(ct, geometry_run)
    by_sitk = predict(sitk.ReadImage(str(write_volume(ct, tmp_path / "ct.nii.gz"))), geometry_run)
    by_dir = predict(tmp_path / "ct.nii.gz", geometry_run.run_dir)
    assert by_volume.same_geometry(ct)
    np.testing.assert_array_equal(by_volume.array, by_sitk.array)
    np.testing.assert_array_equal(by_volume.array, by_dir.array)


def test_load_run_errors_are_clear(tmp_path):
    with pytest.raises(KitsegError, match="no such run folder"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KitsegError, match="recipe.json"):
        load_run(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# Folders: skip finished cases, survive bad inputs, shard, resume after a kill
# ---------------------------------------------------------------------------------------------
def _ct_folder(root: Path, n: int, shape=(24, 40, 40)) -> Path:
    for i in range(n):
        write_volume(_synthetic_ct(shape, seed=i), root / f"ct{i}.nii.gz")
    return root


def test_folder_twice_does_no_work_the_second_time(geometry_run, tmp_path):
    inputs = _ct_folder(tmp_path / "in", 3)
    (inputs / "broken.nii.gz").write_bytes(b"not an image at all")
    first = predict_folder(inputs, tmp_path / "out", geometry_run, progress=False)
    assert first.count("done") == 3 and first.count("failed") == 1
    assert "broken" in first.describe()
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.nii.gz")}
    assert len(stamps) == 3
    second = predict_folder(inputs, tmp_path / "out", geometry_run, progress=False)
    assert second.count("skipped") == 3 and second.count("done") == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.nii.gz")} == stamps


def test_ranks_share_a_folder():
    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items and all(parts)


def test_torchrun_ranks_predict_disjoint_shares(geometry_run, tmp_path, monkeypatch):
    inputs = _ct_folder(tmp_path / "in", 3)
    monkeypatch.setenv("WORLD_SIZE", "2")
    done = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        s = predict_folder(inputs, tmp_path / "out", geometry_run, progress=False)
        done.append({c.case_id for c in s.cases if c.status == "done"})
    assert done[0] | done[1] == {"ct0", "ct1", "ct2"} and not done[0] & done[1]


def test_killed_folder_run_resumes_with_identical_outputs(geometry_run, tmp_path):
    inputs = _ct_folder(tmp_path / "in", 4, shape=(32, 64, 64))
    assert predict_folder(inputs, tmp_path / "ref", geometry_run, progress=False).count("done") == 4
    cmd = [sys.executable, "-m", "kitseg.cli.main", "predict", "-i", str(inputs), "-o", str(tmp_path / "out"),
           "--model", str(geometry_run.run_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    # wait for a finished output (ct*.nii.gz), not for the hidden temporary one being written
    while not list(out.glob("ct*.nii.gz")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= len(list(out.glob("ct*.nii.gz"))) < 4, "the kill came too late to test a resume"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "already done" in again.stdout
    assert sorted(p.name for p in out.iterdir()) == [f"ct{i}.nii.gz" for i in range(4)]  # no temporaries left
    for i in range(4):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"ct{i}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ref" / f"ct{i}.nii.gz")))
        np.testing.assert_array_equal(a, b)
