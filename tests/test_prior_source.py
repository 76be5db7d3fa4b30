"""prior_source: predicted (issue 18, choice c): a stage trained on its earlier stage's predicted mask,
carried through a sample's crop, warp and flips exactly as the label is; checked when a recipe loads."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from kitseg.errors import KitsegError
from kitseg.recipes import validate_recipe
from kitseg.recipes.schema import AugmentSpec, TargetSpec
from kitseg.training import augment as aug
from kitseg.training.sampling import Draw, Geometry, make_sample, make_train_case
from synthetic_kits import TINY_RECIPE, make_case

KITS = TargetSpec(kind="softmax", classes={"kidney": [1], "tumor": [2]})
LOCALIZE = TargetSpec(kind="softmax", classes={"kidney": [1, 2]})


def _tiny_recipe_obj():
    return validate_recipe(yaml.safe_load(TINY_RECIPE))


def test_a_predicted_prior_is_cut_and_warped_with_the_label():
    """prior_source predicted: the sample's prior channel is the case's given prior, moved exactly as
    the label (crop, rotation, flips), and the target is untouched by it."""
    img, lab = make_case((16, 32, 32), seed=0)
    prior = np.zeros_like(lab)
    prior[2:14, 4:20, 6:28] = 1  # a box, unlike the label's kidneys
    stage = _tiny_recipe_obj().stage("segment")
    targets = {"localize": LOCALIZE}
    g3 = Geometry("patch", 3, (8, 16, 16))
    with_prior = make_train_case("c", img, lab, (3.0, 1.5, 1.5), KITS, prior=prior)
    prior_as_label = make_train_case("c", img, prior, (3.0, 1.5, 1.5), KITS)
    plain = make_train_case("c", img, lab, (3.0, 1.5, 1.5), KITS)
    spec = AugmentSpec(rotate_deg=20.0, scale=[0.8, 1.2], flip_axes=[1, 2], probability=1.0)
    for i in range(5):
        params = aug.sample_params(spec, np.random.default_rng(i), 3, (3.0, 1.5, 1.5))
        d = Draw(0, (8, 16, 16), aug=params)
        x, y = make_sample(with_prior, d, g3, stage, targets)
        _, y_prior = make_sample(prior_as_label, d, g3, stage, targets)
        x_plain, y_plain = make_sample(plain, d, g3, stage, targets)
        assert np.array_equal(x[1], (y_prior > 0).astype(np.float32))  # the prior, warped like a label
        assert np.array_equal(y, y_plain) and np.allclose(x[0], x_plain[0])  # target and CT as without it
    with pytest.raises(KitsegError, match="differ in shape"):
        make_train_case("c", img, lab, (3.0, 1.5, 1.5), KITS, prior=prior[:8])


def test_prior_source_predicted_is_checked_when_the_recipe_loads():
    raw = yaml.safe_load(TINY_RECIPE)
    raw["stages"][1]["prior_source"] = "predicted"
    assert validate_recipe(raw).stage("segment").prior_source_stage == "localize"
    raw["stages"][1]["inputs"] = ["ct", "prob:localize"]
    with pytest.raises(KitsegError, match="not probabilities"):
        validate_recipe(raw)
    raw["stages"][1]["inputs"] = ["ct"]
    raw["stages"][1]["roi_from"] = None
    raw["stages"][1]["preprocess"].pop("roi")
    with pytest.raises(KitsegError, match="one earlier stage"):
        validate_recipe(raw)
