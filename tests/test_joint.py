"""Joint training of two cascaded stages (Stage.train_with): TuNet's W-Net + T-Net trained end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kitseg.errors import KitsegError
from kitseg.recipes import load_recipe
from kitseg.stages.checkpoint import build_model, load_checkpoint
from kitseg.training.joint import JointCascade, build_joint, joint_pair, joint_record, joint_stage
from synthetic_kits import make_kits_dataset


def _pair():
    r = load_recipe("tunet", tiny=True)
    return joint_pair(r, r.stage("tnet"))


def test_the_t_net_reads_the_w_net_probability_and_the_loss_flows_through_both():
    first, later = _pair()
    torch.manual_seed(0)
    joint = build_joint(joint_record(first, later))
    x = torch.randn(1, 1, 16, 32, 32)
    out = joint(x)
    assert out.shape == (1, 2, 16, 32, 32)  # [whole (W-Net), tumor (T-Net)]
    with torch.no_grad():  # the T-Net's channels: the CT and sigmoid(W-Net), in the stage's input order
        w = joint.first(x)
        t = joint.second(torch.cat([x, torch.sigmoid(w)], 1))
    assert torch.allclose(out[:, :1], w, atol=1e-6) and torch.allclose(out[:, 1:], t, atol=1e-5)
    out[:, 1].sum().backward()  # a loss on the tumor channel alone reaches the W-Net's weights
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in joint.first.parameters() if p.requires_grad)


def test_joint_stage_learns_both_targets_from_the_ct():
    first, later = _pair()
    s = joint_stage(first, later)
    assert s.inputs == ["ct"] and list(s.target.classes) == ["whole", "tumor"] and s.target.kind == "sigmoid"
    assert s.loss.name == "region_dice"  # L = L_whole + L_tumor over the two channels


def test_pairs_that_cannot_be_trained_together_are_refused():
    r = load_recipe("tunet", tiny=True, overrides=["stages.tnet.preprocess.target_shape=[8, 32, 32]"])
    with pytest.raises(KitsegError, match="one grid"):
        joint_pair(r, r.stage("tnet"))
    with pytest.raises(KitsegError, match="prob:wnet"):
        load_recipe("tunet", overrides=["stages.tnet.inputs=[ct]"])


def test_tunet_trains_w_net_and_t_net_jointly_and_predicts(tmp_path):
    from kitseg.inference import load_run, predict_case
    from kitseg.training.loop import TrainOptions
    from kitseg.training.train_recipe import train_recipe

    data = make_kits_dataset(tmp_path / "data", n=4)
    recipe = load_recipe("tunet", tiny=True, overrides=["stages.lnet.epochs=1", "stages.tnet.epochs=1",
                                                         "stages.tnet.iterations_per_epoch=2"])
    run = tmp_path / "run"
    results = train_recipe(recipe, data, run, folds=0, options=TrainOptions(progress=False), n_splits=2)
    assert [r.stage for r in results] == ["lnet", "tnet"]  # the W-Net is trained inside the T-Net's job
    assert isinstance(results[1].model, JointCascade)
    joint_ck = load_checkpoint(run / "tnet" / "fold_0" / "joint" / "checkpoint_last.pt")
    for prefix, stage in (("first.", "wnet"), ("second.", "tnet")):
        ck = load_checkpoint(run / stage / "fold_0" / "checkpoint_last.pt")
        assert ck["stage"] == stage and ck["trained_with"] == "joint_cascade"
        model = build_model(ck)
        for k, v in model.state_dict().items():
            assert torch.equal(v, joint_ck["model"][prefix + k])
    ct = sorted(data.glob("case_*/imaging.nii.gz"))[0]
    labels = predict_case(ct, load_run(run), device="cpu")
    assert labels.array.dtype == np.uint8 and set(np.unique(labels.array)) <= {0, 1, 2}
    with pytest.raises(KitsegError, match="jointly"):
        train_recipe(recipe, data, run, folds=0, stages=["wnet"], options=TrainOptions(progress=False), n_splits=2)
