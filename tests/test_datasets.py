"""Dataset layouts (KiTS19, KiTS23, nnU-Net/MSD), their typed description, and `kitseg info`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import kits19_label
from kitseg import KitsegError, Volume
from kitseg.cli.main import main
from kitseg.datasets import KITS23, case_id_of, find_images, open_dataset
from kitseg.io import write_volume


def _case(folder, rng, labels=(0, 1, 2), image=True):
    lab = rng.choice(labels, size=(6, 8, 8)).astype(np.uint8)
    if image:
        write_volume(Volume.from_geometry(rng.normal(size=(6, 8, 8)).astype(np.float32), (2, 1, 1)),
                     folder / "imaging.nii.gz")
    write_volume(Volume.from_geometry(lab, (2, 1, 1)), folder / "segmentation.nii.gz")


def test_kits19_layout(tmp_path, rng):
    for i in range(3):
        _case(tmp_path / f"case_{i:05d}", rng, image=i != 2)
    (tmp_path / "notes").mkdir()
    ds = open_dataset(tmp_path)
    assert [c.case_id for c in ds.cases] == ["case_00000", "case_00001", "case_00002"]
    assert ds.spec.regions == {"kidney": [1, 2], "tumor": [2]}
    assert ds.cases[2].image is None
    image, label = ds.cases[0].load(ds.spec)
    assert image.shape == label.shape == (6, 8, 8)


def test_kits23_layout_from_dataset_json(tmp_path, rng):
    _case(tmp_path / "case_00400", rng, labels=(0, 1, 2, 3))
    (tmp_path / "dataset.json").write_text(KITS23.model_dump_json())
    ds = open_dataset(tmp_path)
    assert ds.spec.regions["masses"] == [2, 3] and ds.spec.label_values == {0, 1, 2, 3}
    ds.cases[0].load(ds.spec)
    with pytest.raises(KitsegError, match=r"expected \{0,1,2\}"):
        ds.cases[0].load(open_dataset(tmp_path, preset="kits19").spec)


def test_nnunet_layout(tmp_path, rng):
    for d in ("imagesTr", "labelsTr"):
        (tmp_path / d).mkdir()
    for name in ("kid_001", "kid_002"):
        write_volume(Volume.from_geometry(rng.normal(size=(4, 5, 6)).astype(np.float32)),
                     tmp_path / "imagesTr" / f"{name}_0000.nii.gz")
        write_volume(Volume.from_geometry(np.zeros((4, 5, 6), np.uint8)), tmp_path / "labelsTr" / f"{name}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"name": "Kid", "labels": {"background": 0, "kidney": [1, 2], "tumor": 2, "k": 1},
         "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))
    ds = open_dataset(tmp_path)
    assert [c.case_id for c in ds.cases] == ["kid_001", "kid_002"]
    assert ds.spec.regions == {"kidney": [1, 2]} and ds.spec.label_values == {0, 1, 2}
    assert [cid for cid, _ in find_images(tmp_path)] == ["kid_001", "kid_002"]


def test_msd_paths_escaping_the_dataset_are_refused(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"name": "x", "labels": {"0": "background", "1": "kidney"},
         "training": [{"image": "../../etc/passwd.nii.gz", "label": "labelsTr/a.nii.gz"}]}))
    with pytest.raises(KitsegError, match="escapes the dataset folder"):
        open_dataset(tmp_path)


def test_bad_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(KitsegError, match="dataset.json"):
        open_dataset(tmp_path)
    with pytest.raises(KitsegError, match="no such dataset folder"):
        open_dataset(tmp_path / "missing")


def test_case_ids():
    from pathlib import Path
    assert case_id_of(Path("/d/case_00012/imaging.nii.gz")) == "case_00012"
    assert case_id_of(Path("/d/imagesTs/kid_001_0000.nii.gz")) == "kid_001"
    assert case_id_of(Path("/d/ct.nrrd")) == "ct"


def test_cli_info_file_and_dataset(tmp_path, capsys, rng):
    assert main(["info", str(kits19_label(61))]) == 0
    out = capsys.readouterr().out
    assert "axis codes I,P,L" in out and "(29, 512, 512)" in out and "1:" in out and "2:" in out
    _case(tmp_path / "case_00000", rng)
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 with image" in out and "case_00000" in out
    assert main(["--version"]) == 0
    assert "kitseg 0.1.0" in capsys.readouterr().out
