"""Shareable model files (kitseg export / kitseg.models): same labels as the run folder, hostile files refused."""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from inference_runs import GEOMETRY_RECIPE, recipe_from_yaml, untrained_models, write_run
from kitseg.cli.main import main
from kitseg.errors import KitsegError
from kitseg.io import write_volume
from kitseg.models import export, load
from kitseg.volume import Volume


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    """A run folder with two folds per stage (different untrained weights) and a splits.json."""
    recipe = recipe_from_yaml(GEOMETRY_RECIPE)
    run = write_run(tmp_path_factory.mktemp("run2"), recipe, untrained_models(recipe, seed=3, folds=2))
    (run / "splits.json").write_text(json.dumps({"folds": [{"train": ["a", "b"], "val": ["c"]},
                                                           {"train": ["a", "c"], "val": ["b"]}]}))
    return run


def _ct(path, seed=0):
    arr = np.random.default_rng(seed).normal(-100, 60, (20, 36, 40)).astype(np.int16)
    direction = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    return write_volume(Volume.from_geometry(arr, (2.5, 0.9, 0.8), (12.0, -40.0, 3.5), direction), path)


def test_predict_from_the_model_file_gives_the_run_folders_labels(run2, tmp_path, capsys):
    model = tmp_path / "model.kitseg"
    assert main(["export", str(run2), "-o", str(model)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "wrote" in out and "3 labelled cases, 2 folds" in out
    with zipfile.ZipFile(model) as zf:
        names = set(zf.namelist())
    assert {"kitseg-model.json", "recipe.json", "dataset.json", "model_card.json",
            "weights/segment/fold_1.safetensors"} <= names and not [n for n in names if n.endswith(".pt")]
    for i in range(2):
        _ct(tmp_path / "in" / f"c{i}.nii.gz", seed=i)
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "a"), "--model", str(run2)]) == 0
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "b"), "--model", str(model)]) == 0
    for i in range(2):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / f"c{i}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b" / f"c{i}.nii.gz")))
        assert a.tobytes() == b.tobytes() and len(np.unique(a)) > 1
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    card = capsys.readouterr().out
    assert "recipe        geometry_cascade" in card and "segment fold 1" in card and "KiTS19" in card
    one = load(model, folds=[1])
    assert [len(m) for m in one.models.values()] == [1, 1]
    with pytest.raises(KitsegError, match="has folds"):
        load(model, folds=[4])


def _rewrite(src, dst, change):
    """Copy the model file ``src`` to ``dst`` with ``change(members: dict[name, bytes], manifest: dict)`` applied."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members.pop("kitseg-model.json"))
    change(members, manifest)
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("kitseg-model.json", json.dumps(manifest))
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _escape(members, manifest):
    members["../evil.json"] = b"{}"
    manifest["checksums"]["../evil.json"] = _sha(b"{}")


def _pickle_member(members, manifest):
    members["weights/segment/fold_0.pt"] = pickle.dumps({"x": 1})
    manifest["checksums"]["weights/segment/fold_0.pt"] = _sha(members["weights/segment/fold_0.pt"])


def _pickle_as_weights(members, manifest):
    name = "weights/segment/fold_0.safetensors"
    members[name] = pickle.dumps({"weight": [1.0]})
    manifest["checksums"][name] = _sha(members[name])  # a consistent checksum: the content must still be refused


def _tampered(members, manifest):
    members["recipe.json"] = members["recipe.json"].replace(b"geometry_cascade", b"geometry_cascadX")


def _newer(members, manifest):
    manifest["format_version"] = 99


def _unlisted(members, manifest):
    members["extra.txt"] = b"hello"


@pytest.mark.parametrize("change, message", [
    (_escape, "would escape the model"), (_pickle_member, "pickled"), (_pickle_as_weights, "holds a pickled object"),
    (_tampered, "wrong checksum of member 'recipe.json'"), (_newer, "format 99 is newer than this kitseg reads"),
    (_unlisted, "'extra.txt' is not listed")])
def test_hostile_or_damaged_model_files_are_refused_in_one_line(run2, tmp_path, capsys, change, message):
    good = export(run2, tmp_path / "good.kitseg", folds=[0])
    bad = _rewrite(good, tmp_path / "bad.kitseg", change)
    with pytest.raises(KitsegError, match=message):
        load(bad)
    ct = _ct(tmp_path / "ct.nii.gz")
    assert main(["predict", "-i", str(ct), "-o", str(tmp_path / "seg.nii.gz"), "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.split("'")[0] in err and "Traceback" not in err
    assert not (tmp_path / "seg.nii.gz").exists() and not (tmp_path.parent / "evil.json").exists()


def test_truncated_model_file(run2, tmp_path, capsys):
    good = export(run2, tmp_path / "good.kitseg", folds=[0])
    data = good.read_bytes()
    (tmp_path / "cut.kitseg").write_bytes(data[: len(data) // 2])
    assert main(["info", str(tmp_path / "cut.kitseg")]) == 2
    assert "not a readable zip" in capsys.readouterr().err
    with pytest.raises(KitsegError, match="ends in .kitseg"):
        export(run2, tmp_path / "model.zip")


def test_model_card_of_a_trained_run(tmp_path, capsys):
    """A really trained tiny run: the card has the training data and the validation figures of each fold."""
    from synthetic_kits import make_kits_dataset, write_tiny_recipe

    data = make_kits_dataset(tmp_path / "data", n=4)
    (data / "synth.json").write_text("{}")  # what kitseg synth leaves beside its cases
    run = tmp_path / "run"
    assert main(["train", "--recipe", str(write_tiny_recipe(tmp_path / "tiny.yaml")), "--data", str(data), "-o",
                 str(run), "--no-progress", "--n-splits", "2"]) == 0
    card = json.loads(zipfile.ZipFile(export(run, tmp_path / "m.kitseg")).read("model_card.json"))
    assert card["training_data"]["kind"].startswith("synthetic") and card["training_data"]["labelled_cases"] == 4
    member = card["validation"]["segment"][0]
    assert member["fold"] == 0 and member["epochs_trained"] == 2 and 0.0 <= member["best_smoothed_val_dice"] <= 1.0
    assert set(member["val_dice_at_best_epoch"]) == {"kidney", "tumor"}
    capsys.readouterr()
    assert main(["info", str(tmp_path / "m.kitseg")]) == 0
    assert "best smoothed validation Dice" in capsys.readouterr().out
