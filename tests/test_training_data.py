"""What a model was trained on: training_data.json in the run folder, LoadedRun.training_data, the model card,
and the one-line warning of kitseg predict for a model trained only on synthetic CT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from inference_runs import GEOMETRY_RECIPE, recipe_from_yaml, untrained_models, write_run
from kitseg.cli.main import main
from kitseg.inference import load_run
from kitseg.io import write_volume
from kitseg.models import describe, export, load
from kitseg.synth.tissues import RENDERER_VERSION
from kitseg.training_data import FILE, TrainingData, describe_folder, from_run, synthetic_warning, write
from kitseg.volume import Volume
from synthetic_kits import TINY_RECIPE


def _one_stage_recipe(path):
    """The tests' tiny cascade cut to its first stage, one epoch: the least training that makes a run."""
    data = yaml.safe_load(TINY_RECIPE)
    data["stages"] = data["stages"][:1]
    data["stages"][0]["epochs"] = 1
    data["final"] = {"op": "argmax", "stage": data["stages"][0]["name"]}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path
WARNING = "warning: this model was trained only on synthetic CT"


def _ct(path):
    arr = np.random.default_rng(0).normal(-100, 60, (12, 24, 24)).astype(np.int16)
    return write_volume(Volume.from_geometry(arr, (6.0, 6.0, 6.0)), path)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A run trained (one tiny stage, one epoch) on a `kitseg synth` dataset."""
    tmp = tmp_path_factory.mktemp("synthetic_run")
    data, run, recipe = tmp / "synth", tmp / "run", tmp / "tiny.yaml"
    assert main(["synth", str(data), "--cases", "3", "--size", "tiny", "--no-progress"]) == 0
    _one_stage_recipe(recipe)
    assert main(["train", "--recipe", str(recipe), "--data", str(data), "-o", str(run), "--no-progress",
                 "--n-splits", "2", "--folds", "0"]) == 0
    return data, run


def test_the_run_folder_records_its_synthetic_training_data(synthetic_run):
    data, run = synthetic_run
    record = json.loads((run / FILE).read_text(encoding="utf-8"))
    assert record["synthetic"] is True and record["kind"].startswith("synthetic")
    assert record["renderer_version"] == RENDERER_VERSION
    assert record["folder"] == str(data) and record["labelled_cases"] == 3 and record["folds"] == 2
    assert record["dataset"] == "KiTS19"
    loaded = load_run(run)
    assert loaded.training_data == TrainingData.model_validate(record)


def test_predict_warns_once_for_a_model_trained_only_on_synthetic_ct(synthetic_run, tmp_path, capsys):
    _, run = synthetic_run
    ct = _ct(tmp_path / "ct.nii.gz")
    capsys.readouterr()
    assert main(["predict", "-i", str(ct), "-o", str(tmp_path / "a.nii.gz"), "--model", str(run)]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith(WARNING) and f"renderer version {RENDERER_VERSION}" in lines[0]
    # The same model as a file: the card carries the record, predict warns the same way.
    model = export(run, tmp_path / "m.kitseg")
    assert load(model).training_data.synthetic is True
    assert f"synthetic (kitseg synth), renderer version {RENDERER_VERSION}" in describe(model)
    capsys.readouterr()
    assert main(["predict", "-i", str(ct), "-o", str(tmp_path / "b.nii.gz"), "--model", str(model), "--model",
                 str(run)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith(WARNING) and "(2 of the 2 models given)" in lines[0]


def test_no_warning_for_real_or_unknown_training_data(tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    record = describe_folder(real, "KiTS19", 10, 5)
    assert record.synthetic is False and record.kind.startswith("real CT") and synthetic_warning(record) is None
    run = write_run(tmp_path / "run", recipe_from_yaml(GEOMETRY_RECIPE), untrained_models(recipe_from_yaml(
        GEOMETRY_RECIPE)))
    assert load_run(run).training_data.synthetic is None  # no record, no cache: unknown, no warning
    write(run, record)
    assert load_run(run).training_data == record
    ct = _ct(tmp_path / "ct.nii.gz")
    capsys.readouterr()
    assert main(["predict", "-i", str(ct), "-o", str(tmp_path / "a.nii.gz"), "--model", str(run)]) == 0
    assert "warning:" not in capsys.readouterr().err


def test_older_records_and_folders(tmp_path):
    # A run folder from before training_data.json: described from its cache and splits.
    data = tmp_path / "data"
    data.mkdir()
    (data / "synth.json").write_text(json.dumps({"seed": 0, "cases": []}))  # a synth.json without a version
    run = tmp_path / "run"
    (run / "cache" / "segment").mkdir(parents=True)
    (run / "cache" / "segment" / "cache.json").write_text(json.dumps({"dataset_root": str(data)}))
    (run / "splits.json").write_text(json.dumps({"folds": [{"train": ["a", "b"], "val": ["c"]}]}))
    old = from_run(run, "KiTS19")
    assert old.synthetic is True and old.renderer_version == 1 and old.labelled_cases == 3 and old.folds == 1
    assert "renderer version 1" in synthetic_warning(old)
    # A model card from before the synthetic field: its kind sentence decides.
    assert TrainingData.model_validate({"kind": "synthetic (kitseg synth)", "folder": "x"}).synthetic is True
    assert TrainingData.model_validate({"kind": "real CT (no synth.json)"}).synthetic is False
    assert describe_folder(tmp_path / "gone").synthetic is None
