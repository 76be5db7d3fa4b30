"""Padding at inference holds what training's patches hold beyond a volume's edge, per channel
(``kitseg.stages.inputs.pad_values``): the CT's darkest value, 0 in priors."""

from __future__ import annotations

import pytest
import torch

from inference_runs import GEOMETRY_RECIPE, recipe_from_yaml, untrained_models
from kitseg.datasets import KITS19
from kitseg.errors import KitsegError
from kitseg.inference import LoadedRun, predict_case
from kitseg.inference.sliding import sliding_window
from kitseg.inference.variants import slices25d
from kitseg.volume import Volume
from synthetic_kits import make_case


def _synthetic_ct(shape, spacing=(3.0, 1.5, 1.5), seed=0) -> Volume:
    img, _ = make_case(shape, seed)
    return Volume.from_geometry(img, spacing=spacing, origin=(10.0, -20.0, 30.0))


def test_padding_holds_one_value_per_channel():
    seen = []

    def predictor(x):
        seen.append(x.clone())
        return torch.softmax(torch.stack([-x[:, 0], x[:, 0]], 1), 1)

    img = torch.randn(2, 5, 10, 12)
    out = sliding_window(img, predictor, (8, 16, 16), 0.5, pad_value=[-3.0, 0.0])
    assert out.shape == (2, 5, 10, 12)
    x = seen[0][0]  # padded symmetrically: z 1 + 2, y 3 + 3, x 2 + 2
    assert (x[0, 0] == -3.0).all() and (x[1, 0] == 0.0).all() and (x[0, :, :3] == -3.0).all()
    torch.testing.assert_close(x[:, 1:6, 3:13, 2:14], img)
    with pytest.raises(KitsegError, match="3 pad values"):
        sliding_window(img, predictor, (8, 16, 16), pad_value=[0.0, 0.0, 0.0])


def test_slices25d_pads_each_stacked_channel_with_its_input_channel_value():
    seen = []

    def centre(x):
        seen.append(x.clone())
        return torch.cat([x[:, 1:2], -x[:, 1:2]], 1)

    img = torch.randn(2, 4, 6, 10)
    slices25d(img, centre, 3, batch_size=4, divisor=(8, 8), pad_value=[-5.0, 0.0])
    x = seen[0]  # (4 slices, 3 context x 2 channels, 8, 16): slice-major, so channels alternate -5, 0
    assert x.shape == (4, 6, 8, 16)
    assert [float(v) for v in x[0, :, 0, 0]] == [-5.0, 0.0] * 3
    seen.clear()
    slices25d(img, centre, 3, in_plane=(8, 16), batch_size=4, pad_value=[-5.0, 0.0])
    assert [float(v) for v in seen[0][0, :, 0, 0]] == [-5.0, 0.0] * 3


def test_inference_pads_a_box_as_training_pads_its_patches(monkeypatch):
    """A kidney box smaller than the patch: the CT channel is padded with its darkest value and the
    prior with 0, as training's patches are (kitseg.training.sampling); padding with 0 everywhere
    shifted the instance-norm statistics and grew every predicted kidney by a voxel."""
    from kitseg.inference import sliding

    recipe = recipe_from_yaml(GEOMETRY_RECIPE)
    run = LoadedRun(recipe, KITS19, None, untrained_models(recipe))
    pads = {}
    real = sliding._sliding_window

    def spy(image, predictor, patch_size, overlap, **kw):
        pads.setdefault(len(pads), (image.clone(), kw["pad_value"]))
        return real(image, predictor, patch_size, overlap, **kw)

    monkeypatch.setattr(sliding, "_sliding_window", spy)
    predict_case(_synthetic_ct((24, 60, 60)), run)
    image, values = pads[len(pads) - 1]  # the segment stage: [CT, mask:localize]
    assert len(values) == 2 and values[1] == 0.0
    assert values[0] == pytest.approx(float(image[0].min())) and values[0] < 0
