"""`kitseg predict`: one file, a folder, probabilities, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from inference_runs import GEOMETRY_RECIPE, recipe_from_yaml, untrained_models, write_run
from kitseg.cli.main import main
from kitseg.inference import load_run, predict_case
from kitseg.io import read_volume, write_volume
from kitseg.recipes import apply_overrides, validate_recipe
from kitseg.volume import Volume


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"), recipe_from_yaml(GEOMETRY_RECIPE))


def _ct(path, seed=0, shape=(20, 36, 40)):
    rng = np.random.default_rng(seed)
    arr = rng.normal(-100, 50, shape).astype(np.int16)
    direction = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])  # y flipped: not canonical
    vol = Volume.from_geometry(arr, (2.5, 0.9, 0.8), (12.0, -40.0, 3.5), direction)
    return write_volume(vol, path, compress=not str(path).endswith(".nrrd"))  # io: compressed NRRD fails its size check


def test_one_file(run_dir, tmp_path, capsys):
    src = _ct(tmp_path / "ct.nrrd")
    rc = main(["predict", "-i", str(src), "-o", str(tmp_path / "seg.nii.gz"), "--model", str(run_dir)])
    assert rc == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(tmp_path / "seg.nii.gz"))
    assert a.GetSize() == b.GetSize() and b.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    assert read_volume(tmp_path / "seg.nii.gz").same_geometry(read_volume(src))


def test_a_folder_with_probabilities_and_tta(run_dir, tmp_path, capsys):
    for i in range(2):
        _ct(tmp_path / "in" / f"case{i}.nii.gz", seed=i)
    rc = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(run_dir),
               "--save-probabilities", "--tta"])
    assert rc == 0, capsys.readouterr().err
    assert "2 predicted" in capsys.readouterr().out
    for i in range(2):
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"case{i}.nii.gz")))
        probs = np.load(tmp_path / "out" / f"case{i}_probabilities.npz")["probabilities"]
        assert probs.shape == (3, *labels.shape) and probs.dtype == np.float16
    rc = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(run_dir),
               "--save-probabilities"])
    assert rc == 0 and "2 already done" in capsys.readouterr().out


def test_errors_are_one_line(run_dir, tmp_path, capsys):
    _ct(tmp_path / "in" / "a.nii.gz")
    _ct(tmp_path / "in" / "b.nii.gz")
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "x.nii.gz"), "--model",
                 str(run_dir)]) == 2
    assert "give a folder as -o" in capsys.readouterr().err
    assert main(["predict", "-i", str(tmp_path / "in" / "a.nii.gz"), "-o", str(tmp_path / "x.nii.gz"), "--model",
                 str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "no such run folder" in err and "Traceback" not in err
    (tmp_path / "in" / "c.nii.gz").write_bytes(b"garbage")
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(run_dir)]) == 2
    captured = capsys.readouterr()
    assert "1 of 3 cases failed" in captured.err and "2 predicted" in captured.out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii.gz"]


def test_help(capsys):
    assert main(["predict", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--input", "--output", "--model", "--device", "--tta", "--save-probabilities", "torchrun"):
        assert option in out


def test_several_runs_are_averaged_and_the_first_decides_the_final_step(run_dir, tmp_path, capsys):
    raw = apply_overrides(yaml.safe_load(GEOMETRY_RECIPE), {"ensemble": 3, "final": {"op": "argmax", "stage":
                                                                                      "localize"}})
    other = write_run(tmp_path / "other", validate_recipe(raw), untrained_models(validate_recipe(raw), seed=5))
    src = _ct(tmp_path / "ct.nii.gz")
    assert main(["predict", "-i", str(src), "-o", str(tmp_path / "a.nii.gz"), "--model", str(run_dir), "--model",
                 str(other)]) == 0
    assert "note:" not in capsys.readouterr().err  # the first run's recipe asks for one model per stage
    both = [load_run(run_dir), load_run(other)]
    np.testing.assert_array_equal(read_volume(tmp_path / "a.nii.gz").array, predict_case(src, both).array)
    assert not np.array_equal(predict_case(src, both).array, predict_case(src, both[0]).array)
    # the other order: localize's labels are final, and 2 of the 3 models its recipe averages are here
    assert main(["predict", "-i", str(src), "-o", str(tmp_path / "b.nii.gz"), "--model", str(other), "--model",
                 str(run_dir)]) == 0
    assert "averages 3 models per stage; this prediction averages 2" in capsys.readouterr().err
    b = read_volume(tmp_path / "b.nii.gz").array
    np.testing.assert_array_equal(b, predict_case(src, both[::-1]).array)
    assert set(np.unique(b)) <= {0, 1}  # localize has one class: kidney incl. tumor
