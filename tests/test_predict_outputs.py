"""What `kitseg predict` writes besides the label file: per-case statistics, DICOM-SEG, Slicer .seg.nrrd."""

from __future__ import annotations

import json

import numpy as np

from kitseg.cli.main import main
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
