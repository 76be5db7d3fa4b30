"""Every shipped recipe, and every variant, runs end to end at --tiny size.

For each recipe of ``list_recipes()`` and each of its variants: resolve it as ``kitseg train --tiny``
does, check that the variant's values survive the tiny overrides, build every stage's network,
train every stage for one step (``train_cascade``, as kitseg train: fingerprint, caches, one epoch of one iteration)
and segment a held-out synthetic CT through ``predict_case``: a uint8 Volume on the input's grid
with labels in {0, 1, 2}. A variant that changes only the inference side (``final``, ``ensemble``)
reuses its recipe's trained run. Plotting the training curves is skipped (matplotlib costs more
than the training step here).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from kitseg.cascade_training import train_cascade
from kitseg.errors import KitsegError
from kitseg.inference import LoadedRun, load_run, predict_case
from kitseg.nets import build_network
from kitseg.recipes import apply_overrides, list_recipes, load_recipe, validate_recipe
from kitseg.recipes.schema import Recipe
from kitseg.recipes.tables import lookup
from kitseg.training import logs
from kitseg.training.loop import TrainOptions
from kitseg.volume import Volume
from synthetic_kits import make_case, make_kits_dataset

INFERENCE_ONLY = ("final", "ensemble")  # variant keys that do not change what is trained
HAS_CRF = importlib.util.find_spec("pydensecrf") is not None


@functools.cache
def plain(name: str) -> Recipe:
    """The recipe as written (cached: parsing the YAML costs more than a tiny training step)."""
    return load_recipe(name)


def _cases() -> list[tuple[str, str | None]]:
    return [(name, v) for name in list_recipes() for v in (None, *plain(name).variants)]


CASES = _cases()


@pytest.fixture(autouse=True)
def no_curves(monkeypatch):
    monkeypatch.setattr(logs, "write_curves", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_kits_dataset(tmp_path_factory.mktemp("recipes_all") / "data", n=2, shape=(16, 32, 32))


@pytest.fixture(scope="module")
def held_out_ct() -> Volume:
    img, _ = make_case((20, 36, 36), seed=99)  # another shape than the training cases, an off-origin grid
    return Volume.from_geometry(img, spacing=(2.5, 1.4, 1.4), origin=(-7.0, 12.0, 30.0))


@pytest.fixture(scope="module")
def trained_runs() -> dict:
    return {}


def tiny_recipe(name: str, variant: str | None = None, overrides: dict | None = None) -> Recipe:
    """The recipe ``kitseg train --recipe NAME --variant V --tiny`` trains (src/kitseg/cli/train.py)."""
    return load_recipe(name, overrides or {}, tiny=True, variant=variant)


def one_step(recipe: Recipe, overrides: dict | None = None) -> Recipe:
    """``recipe`` with one epoch of one iteration per stage (and ``overrides``)."""
    steps = {f"stages.{s.name}.{k}": 1 for s in recipe.stages for k in ("epochs", "iterations_per_epoch")}
    return validate_recipe(apply_overrides(recipe.model_dump(mode="json"), {**steps, **(overrides or {})}))


def train_and_predict(recipe: Recipe, data: Path, run_dir: Path, ct: Volume) -> Volume:
    results = train_cascade(recipe, data, run_dir, folds=0, n_splits=2,  # what kitseg train calls
                            options=TrainOptions(seed=0, progress=False, amp=False, val_per_case=1))
    joint_firsts = {s.train_with for s in recipe.stages}  # trained inside the later stage's job (train_with)
    expected = [(s.name, 0) for s in recipe.stages if s.name not in joint_firsts for _ in range(recipe.ensemble)]
    # prior_source predicted: the earlier stage is also trained on fold 1, which predicts fold 0's training cases
    expected += [(s.prior_source_stage, 1) for s in recipe.stages if s.prior_source_stage]
    assert sorted((r.stage, r.fold) for r in results) == sorted(expected)  # ensemble members, own seeds
    for r in results:
        assert r.finished and len(r.history) == 1
        assert np.isfinite(r.history[0]["train_loss"]) and np.isfinite(r.history[0]["val_loss"]), r.stage
    return predict_case(ct, load_run(run_dir))


def check_labels(out: Volume, ct: Volume) -> None:
    assert isinstance(out, Volume)
    assert out.array.dtype == np.uint8
    assert out.shape == ct.shape and out.same_geometry(ct)
    assert set(np.unique(out.array).tolist()) <= {0, 1, 2}


def _contains(actual, expected) -> bool:
    """``expected`` (as written in YAML) is ``actual`` (validated, defaults filled in)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and _contains(actual[k], v) for k, v in expected.items())
    if isinstance(expected, (list, tuple)):
        return isinstance(actual, (list, tuple)) and len(actual) == len(expected) and \
            all(_contains(a, e) for a, e in zip(actual, expected))
    return actual == expected


@pytest.mark.parametrize("name,variant", CASES, ids=[n if v is None else f"{n}:{v}" for n, v in CASES])
def test_recipe_trains_one_step_and_predicts(name, variant, data, held_out_ct, trained_runs, tmp_path):
    recipe = one_step(tiny_recipe(name, variant))
    for s in recipe.stages:  # every stage's network builds with the stage's inputs and targets
        build_network(s.network.name, s.in_channels, s.target.out_channels, **s.network.params)
    changes = plain(name).variants[variant] if variant else {}
    tiny_keys = set((changes.get("tiny") or plain(name).tiny).keys())
    resolved = recipe.model_dump(mode="json")
    for key, value in changes.items():  # --tiny must not undo what the variant changes
        if key == "tiny" or any(t == key or t.startswith(key + ".") for t in tiny_keys):
            continue  # tiny shrinks this value on purpose
        assert _contains(lookup(resolved, key), value), f"--tiny undoes {variant}'s {key}={value}"

    inference_only = variant is not None and set(changes) <= set(INFERENCE_ONLY)
    if inference_only and name in trained_runs:
        base = trained_runs[name]
        run = LoadedRun(recipe, base.dataset, base.fingerprint, base.models, base.device, base.run_dir)
        out = predict_case(held_out_ct, [run] * min(recipe.ensemble, 2))  # an ensemble of runs (TuNet 3.6)
    elif any(step.op == "crf" for s in recipe.stages for step in s.postprocess) and not HAS_CRF:
        with pytest.raises(KitsegError, match="pydensecrf2"):
            train_and_predict(recipe, data, tmp_path / "run", held_out_ct)
        return
    else:
        out = train_and_predict(recipe, data, tmp_path / "run", held_out_ct)
        if variant is None:
            trained_runs[name] = load_run(tmp_path / "run")
    check_labels(out, held_out_ct)


@pytest.mark.parametrize("override, message", [
    # a 3D network given a 2D patch
    ({"stages.segment.patch_size": [64, 64]}, "has 2 axes"),
    # a 2D network given a 3D patch
    ({"stages.segment.network": {"name": "unet2d", "params": {"base_features": 4, "n_levels": 3}}}, "has 3 axes"),
    # a patch the network's poolings cannot divide
    ({"stages.segment.patch_size": [15, 64, 64]}, "divisible"),
])
def test_a_recipe_whose_network_cannot_take_its_inputs_fails(override, message, data, held_out_ct, tmp_path):
    recipe = one_step(tiny_recipe("zhang2019_cascade"), override)
    with pytest.raises(KitsegError, match=message):
        train_and_predict(recipe, data, tmp_path / "run", held_out_ct)


def test_every_recipe_has_a_title_and_cites_its_paper():
    for name in list_recipes():
        r = plain(name)
        assert r.title and r.paper and r.citations, name


@pytest.mark.parametrize("name", list_recipes())
def test_cpu_profile_validates_and_trains_one_epoch(name, data, held_out_ct, tmp_path):
    """Every recipe has a `cpu` profile (`kitseg train --profile cpu`) that trains: one epoch of one
    iteration per stage on tiny data (the profile's own networks, patches and batches), then predicts."""
    recipe = load_recipe(name, profile="cpu")
    assert plain(name).cpu and recipe.profile == "cpu"
    changed = {k for k in plain(name).cpu if k.split(".")[-1] != "epochs"}
    resolved = recipe.model_dump(mode="json")
    for key in changed:  # the profile's values are what the resolved recipe trains
        assert _contains(lookup(resolved, key), plain(name).cpu[key]), key
    recipe = one_step(recipe)
    check_labels(train_and_predict(recipe, data, tmp_path / "run", held_out_ct), held_out_ct)


def _cpu_training_variants() -> list[tuple[str, str]]:
    """Variants whose ``cpu`` section changes what the cpu profile trains (not only post-processing or inference)."""
    return [(name, v) for name in list_recipes() for v, changes in plain(name).variants.items()
            if any(".postprocess" not in k and ".inference" not in k for k in (changes.get("cpu") or {}))]


CPU_VARIANTS = _cpu_training_variants()


@pytest.mark.parametrize("name,variant", CPU_VARIANTS, ids=[f"{n}:{v}" for n, v in CPU_VARIANTS])
def test_cpu_variant_trains_one_epoch(name, variant, data, held_out_ct, tmp_path):
    """A variant of the cpu profile (`kitseg train --profile cpu --variant V`) trains what it says: its values are in
    the resolved recipe, which trains one step per stage on tiny data and predicts."""
    recipe = load_recipe(name, profile="cpu", variant=variant)
    resolved = recipe.model_dump(mode="json")
    for key, value in plain(name).variants[variant]["cpu"].items():
        assert _contains(lookup(resolved, key), value), key
    check_labels(train_and_predict(one_step(recipe), data, tmp_path / "run", held_out_ct), held_out_ct)
