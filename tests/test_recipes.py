"""Recipes are pure, validated data: loading, overrides, --tiny, variants, refusals that name the key."""

from __future__ import annotations

import pytest
import yaml

from kitseg import KitsegError
from kitseg.cli.main import main
from kitseg.recipes import DEFAULT_RECIPE, apply_overrides, list_recipes, load_recipe, recipe_path
from kitseg.recipes.tables import flatten


def test_every_recipe_loads_plain_and_tiny():
    names = list_recipes()
    assert DEFAULT_RECIPE in names
    for name in names:
        r = load_recipe(name)
        t = load_recipe(name, tiny=True)
        assert [s.name for s in r.stages] == [s.name for s in t.stages]
        for variant in r.variants:
            load_recipe(name, variant=variant, tiny=True)


def test_every_citation_and_deviation_names_a_real_key():
    for name in list_recipes():
        r = load_recipe(name)
        keys = set(flatten(r.model_dump(mode="json")))
        for key in list(r.citations) + list(r.deviations):
            assert any(k == key or k.startswith(key + ".") for k in keys), f"{name}: {key} is not a recipe key"


def test_overrides_by_stage_name_and_index():
    r = load_recipe(DEFAULT_RECIPE, ["stages.segment.optimizer.lr=1e-4", "stages.0.batch_size=3"])
    assert r.stage("segment").optimizer.lr == 1e-4
    assert r.stages[0].batch_size == 3


@pytest.mark.parametrize("override, key", [
    ("stages.segment.optimizer.lrr=1", "stages.segment.optimizer.lrr: unknown key"),
    ("stages.segment.optimizer.lr=-1", "stages.segment.optimizer.lr"),
    ("stages.segment.batch_size=many", "stages.segment.batch_size"),
    ("stages.segment.loss.name=magic", "stages.segment.loss.name"),
    ("stages.nostage.epochs=1", "no stage or list item 'nostage'"),
    ("stages.segment.inputs=[ct, 'mask:later']", "not an earlier stage"),
])
def test_bad_values_are_refused_naming_the_key(override, key):
    with pytest.raises(KitsegError, match=key.replace("[", r"\[")):
        load_recipe(DEFAULT_RECIPE, [override])


def test_bad_recipe_file_names_the_key(tmp_path):
    data = yaml.safe_load(recipe_path(DEFAULT_RECIPE).read_text(encoding="utf-8"))
    data = apply_overrides(data, {"stages.localize.preprocess.intensity.scheme": "zscore!"})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(KitsegError, match=r"bad.yaml: recipe key stages.localize.preprocess.intensity.scheme"):
        load_recipe(path)
    with pytest.raises(KitsegError, match="unknown recipe 'nope'"):
        load_recipe("nope")


def test_cli_recipes(capsys):
    assert main(["recipes"]) == 0
    assert DEFAULT_RECIPE in capsys.readouterr().out
    assert main(["recipes", DEFAULT_RECIPE, "--tiny", "--set", "stages.segment.epochs=3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["stages"][1]["epochs"] == 3
    assert main(["recipes", DEFAULT_RECIPE, "--set", "stages.segment.epochs=0"]) == 2
    assert "stages.segment.epochs" in capsys.readouterr().err
    assert main(["recipes", "--markdown"]) == 0
    assert "| `stages.segment.patch_size` |" in capsys.readouterr().out


def _parameters(stage, **params) -> int:
    import torch

    from kitseg.nets import build_network

    with torch.device("meta"):
        net = build_network(stage.network.name, stage.in_channels, stage.target.out_channels,
                            **{**stage.network.params, **params})
    return sum(p.numel() for p in net.parameters())


def test_zhang_deviations_state_the_parameter_counts_of_the_built_networks():
    """The 320-feature cap and the pooling order are declared with their parameter-count effect; the
    figures quoted must be those of the networks as built (capped, uncapped, early pooling)."""
    import re

    r = load_recipe("zhang2019_cascade")

    def counts(key):
        return [int(n.replace(",", "")) for n in re.findall(r"\d{1,3}(?:,\d{3})+", r.deviations[key])]

    loc, seg = r.stage("localize"), r.stage("segment")
    for stage in (loc, seg):
        key = f"stages.{stage.name}.network.params.max_features"
        assert counts(key) == [_parameters(stage), _parameters(stage, max_features=None)]
    assert counts("stages.segment.network.params.pool_order") == [_parameters(seg, pool_order="early")]


def test_recipes_cite_papers_not_files_users_do_not_have():
    """A recipe's paper, citations and deviations name papers (title, venue, year), never a path into
    the development workplace (../shared/papers/..., REFERENCE.md)."""
    for name in list_recipes():
        text = recipe_path(name).read_text(encoding="utf-8")
        for bad in ("shared/", "REFERENCE.md", ".txt)"):
            assert bad not in text, f"{name}: mentions {bad!r}"
        r = load_recipe(name)
        assert any(str(y) in r.paper for y in range(2015, 2026)), f"{name}: the paper has no year: {r.paper}"


def test_pool_counts_are_derived_from_the_patch_when_a_recipe_omits_them(tmp_path):
    from kitseg.nets import build_network, pool_plan
    from kitseg.stages.checkpoint import network_record
    from synthetic_kits import write_tiny_recipe

    path = write_tiny_recipe(tmp_path / "tiny.yaml")
    stated = load_recipe(path).stage("localize")
    assert stated.network_params["pool_counts"] == stated.network.params["pool_counts"]  # stated: kept
    omitted = load_recipe(path, {"stages.localize.network.params": {"base_features": 4},
                                 "stages.localize.patch_size": [16, 32, 64]}).stage("localize")
    assert "pool_counts" not in omitted.network.params
    assert tuple(omitted.network_params["pool_counts"]) == pool_plan([16, 32, 64]) == (2, 3, 4)
    record = network_record(omitted)  # what training builds and the checkpoint records for inference
    net = build_network(record["name"], record["in_channels"], record["out_channels"], **record["params"])
    assert tuple(net.size_divisor) == (4, 8, 16)


def test_post_processing_parameters_are_checked_against_the_op_when_the_recipe_loads():
    base = {"stages.segment.postprocess": [{"op": "largest_components", "params": {"n": 1, "connectivity": 26}}]}
    assert load_recipe("kitseg_cascade", base).stage("segment").postprocess[0].params["n"] == 1
    for params, words in (({"n": 1, "conectivity": 26}, "unknown parameter 'conectivity'"),
                          ({"n": 0}, "'n'"), ({"n": 1, "connectivity": 7}, "'connectivity'"), ({}, "'n'")):
        with pytest.raises(KitsegError, match=words):
            load_recipe("kitseg_cascade", {"stages.segment.postprocess": [{"op": "largest_components",
                                                                           "params": params}]})
    with pytest.raises(KitsegError, match="min_fraction"):
        load_recipe("kitseg_cascade", {"final.postprocess": [{"op": "drop_small_tumors",
                                                              "params": {"min_fraction": 2.0}}]})


def test_a_variants_cpu_section_changes_only_its_keys_of_the_cpu_profile():
    base = load_recipe("kitseg_cascade", profile="cpu")
    trial = load_recipe("kitseg_cascade", variant="tumor_argmax", profile="cpu")
    assert [p.op for p in base.stage("segment").postprocess][0] == "class_threshold"
    assert trial.stage("segment").postprocess == base.stage("segment").postprocess[1:]
    assert trial.stage("segment").patch_size == base.stage("segment").patch_size == [64, 64]
    seg3d = load_recipe("kitseg_cascade", variant="seg3d", profile="cpu").stage("segment")
    assert (seg3d.network.name, seg3d.patch_size) == ("resunet_ds_zhang", [32, 96, 96])
    assert seg3d.postprocess == base.stage("segment").postprocess  # the profile's other keys stay
    assert trial.stage("localize").postprocess == base.stage("localize").postprocess
    assert load_recipe("kitseg_cascade", variant="batch_dice", profile="cpu").stage("segment").loss.params == {
        "batch_dice": True}
    assert load_recipe("kitseg_cascade", variant="tumor_argmax").stage("segment").postprocess == load_recipe(
        "kitseg_cascade").stage("segment").postprocess  # the paper-size recipe is not touched


@pytest.mark.parametrize("op", ["class_threshold", "crf"])
def test_ops_that_need_probabilities_are_refused_in_final_postprocess(op):
    step = {"op": op, "params": {"min_prob": 0.2} if op == "class_threshold" else {}}
    with pytest.raises(KitsegError, match=f"op '{op}' needs a stage's probabilities"):
        load_recipe("kitseg_cascade", {"final.postprocess": [step]})
    load_recipe("kitseg_cascade", {"stages.segment.postprocess": [step]})  # a stage's postprocess takes it
