"""Losses against MONAI where the definitions match, else against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss, FocalLoss

from kitseg.errors import KitsegError
from kitseg.losses import build_loss, downsample_target, ds_weights
from kitseg.recipes.schema import DeepSupervisionSpec, LossSpec, TargetSpec

KITS = TargetSpec(kind="softmax", classes={"kidney": [1], "tumor": [2]})
TUNET = TargetSpec(kind="sigmoid", classes={"whole": [1, 2], "tumor": [2]})


@pytest.fixture
def softmax_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 4, 6, 5, generator=g), torch.randint(0, 3, (2, 4, 6, 5), generator=g)


@pytest.fixture
def sigmoid_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 2, 4, 6, 5, generator=g), (torch.rand(2, 2, 4, 6, 5, generator=g) > 0.6).float()


def loss(name, target=KITS, **params):
    return build_loss(LossSpec(name=name, params=params), target)


def test_softmax_dice_matches_monai(softmax_batch):
    x, y = softmax_batch
    ref = DiceLoss(to_onehot_y=True, softmax=True, include_background=False)(x, y[:, None])
    assert torch.allclose(loss("dice")(x, y), ref, atol=1e-6)
    ref_bg = DiceLoss(to_onehot_y=True, softmax=True, include_background=True, batch=True)(x, y[:, None])
    assert torch.allclose(loss("dice", include_background=True, batch_dice=True)(x, y), ref_bg, atol=1e-6)


def test_dice_ce_matches_monai(softmax_batch):
    x, y = softmax_batch
    ref = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)(x, y[:, None])
    assert torch.allclose(loss("dice_ce")(x, y), ref, atol=1e-6)


def test_sigmoid_dice_and_bce_dice_match_monai(sigmoid_batch):
    x, y = sigmoid_batch
    assert torch.allclose(loss("dice", TUNET)(x, y), DiceLoss(sigmoid=True)(x, y), atol=1e-6)
    # MONAI's DiceCELoss uses BCE only for one channel: compare per channel
    for c in range(2):
        ref = DiceCELoss(sigmoid=True)(x[:, c : c + 1], y[:, c : c + 1])
        one = build_loss(LossSpec(name="bce_dice"), TargetSpec(kind="sigmoid", classes={"r": [1]}))
        assert torch.allclose(one(x[:, c : c + 1], y[:, c : c + 1]), ref, atol=1e-6)
    ref = DiceLoss(sigmoid=True)(x, y) + torch.nn.functional.binary_cross_entropy_with_logits(x, y)
    assert torch.allclose(loss("bce_dice", TUNET)(x, y), ref, atol=1e-6)


def test_region_dice_is_tunet_sum_of_region_losses(sigmoid_batch):
    """TuNet eq. 1-2: L = L_whole + L_tumor, each a soft Dice loss of sigmoid outputs."""
    x, y = sigmoid_batch
    u, v = torch.sigmoid(x).numpy(), y.numpy()
    total = 0.0
    for c in range(2):  # regions
        per_sample = [1 - (2 * (u[n, c] * v[n, c]).sum() + 1e-5) / (u[n, c].sum() + v[n, c].sum() + 1e-5)
                      for n in range(2)]
        total += np.mean(per_sample)
    assert loss("region_dice", TUNET)(x, y).item() == pytest.approx(total, rel=1e-5)


def test_weighted_ce_by_hand(softmax_batch):
    """3D FCN-PPM eq. 1 with weights 0.2 background, 1.0 kidney, 2.0 tumor (weighted mean over voxels)."""
    x, y = softmax_batch
    w = {"background": 0.2, "kidney": 1.0, "tumor": 2.0}
    logp = torch.log_softmax(x, 1).numpy()
    yy = y.numpy()
    wv = np.array([0.2, 1.0, 2.0])[yy]
    picked = np.take_along_axis(logp, yy[:, None], 1)[:, 0]
    expected = -(wv * picked).sum() / wv.sum()
    assert loss("weighted_ce", **{"class_weights": w})(x, y).item() == pytest.approx(expected, rel=1e-5)
    assert loss("weighted_ce", class_weights=[0.2, 1.0, 2.0])(x, y).item() == pytest.approx(expected, rel=1e-5)


def test_focal_dice_matches_monai(softmax_batch):
    """Focal (gamma 2) + Dice; MONAI's FocalLoss averages over channels too, hence the factor C."""
    x, y = softmax_batch
    focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0, include_background=True)(x, y[:, None]) * 3
    dice = DiceLoss(to_onehot_y=True, softmax=True, include_background=False)(x, y[:, None])
    assert torch.allclose(loss("focal_dice")(x, y), focal + dice, atol=1e-6)


def test_weighted_dice_by_hand(softmax_batch):
    x, y = softmax_batch
    per = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, reduction="none")(x, y[:, None])
    per = per.reshape(2, 2)  # (N, classes)
    expected = (per * torch.tensor([1.0, 3.0])).sum(1).mean() / 4.0
    got = loss("focal_dice", dice_class_weights={"background": 0, "kidney": 1, "tumor": 3}, focal_weight=0.0)(x, y)
    assert torch.allclose(got, expected, atol=1e-6)


def test_ds_weights_halving_and_resunet_schedule():
    assert ds_weights(DeepSupervisionSpec(), 3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    # ResUNet paper 2.1: L = mu (L1 + L2 + L3) + L4, mu = 0.33, x 0.8 every 15 epochs
    spec = DeepSupervisionSpec(weights=[1.0, 0.33, 0.33, 0.33], decay=0.8, decay_every=15)
    assert ds_weights(spec, 4, 0) == pytest.approx([1, 0.33, 0.33, 0.33])
    assert ds_weights(spec, 4, 14) == pytest.approx([1, 0.33, 0.33, 0.33])
    assert ds_weights(spec, 4, 15) == pytest.approx([1, 0.264, 0.264, 0.264])
    assert ds_weights(spec, 4, 31) == pytest.approx([1, 0.33 * 0.64] + [0.33 * 0.64] * 2)
    assert ds_weights(spec, 2, 0) == pytest.approx([1, 0.33])  # fewer heads (a --tiny network)
    assert ds_weights(spec, 5, 0) == pytest.approx([1, 0.33, 0.33, 0.33, 0.0])


def test_deep_supervision_downsamples_targets(softmax_batch, sigmoid_batch):
    x, y = softmax_batch
    x = torch.randn(2, 3, 4, 6, 6)
    y = torch.randint(0, 3, (2, 4, 6, 6))
    half = torch.randn(2, 3, 2, 3, 3)
    ds = build_loss(LossSpec(name="dice_ce", deep_supervision=DeepSupervisionSpec()), KITS)
    single = loss("dice_ce")
    expected = 2 / 3 * single(x, y) + 1 / 3 * single(half, y[:, ::2, ::2, ::2])
    assert torch.allclose(ds([x, half], y), expected, atol=1e-6)
    # binary region channels are max-pooled: a small tumor survives at the coarse scale
    yb = torch.zeros(1, 1, 4, 4, 4)
    yb[0, 0, 1, 1, 1] = 1
    coarse = downsample_target(yb, (2, 2, 2), softmax=False)
    assert coarse[0, 0, 0, 0, 0] == 1 and coarse.sum() == 1
    # a list without deep-supervision weights trains the finest output only
    assert torch.allclose(single([x, half], y), single(x, y))


def test_loss_errors(softmax_batch):
    x, y = softmax_batch
    with pytest.raises(KitsegError, match="class_weights"):
        loss("weighted_ce")
    with pytest.raises(KitsegError, match="no parameter"):
        loss("dice", gama=2)
    with pytest.raises(KitsegError, match="sigmoid target"):
        loss("region_dice")
    with pytest.raises(KitsegError, match="missing"):
        loss("weighted_ce", class_weights={"kidney": 1.0})
    with pytest.raises(KitsegError, match="output channels"):
        loss("dice_ce")(x[:, :2], y)


def test_dice_ce_trains_a_voxel_classifier():
    """Gradient sanity: a 1x1 convolution learns a thresholding task with Dice + CE."""
    g = torch.Generator().manual_seed(0)
    img = torch.rand(4, 1, 8, 8, 8, generator=g)
    y = (img[:, 0] > 0.7).long() + (img[:, 0] > 0.9).long()
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    fn = loss("dice_ce")
    first = fn(net(img), y).item()
    for _ in range(150):
        opt.zero_grad()
        out = fn(net(img), y)
        out.backward()
        opt.step()
    assert out.item() < 0.5 * first
    assert (net(img).argmax(1) == y).float().mean() > 0.9
