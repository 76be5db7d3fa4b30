"""Joint training of two cascaded stages (``Stage.train_with``): TuNet's end-to-end W-Net + T-Net.

TuNet section 3.2, eq. 1: one objective L = L_whole + L_tumor, trained end to end, the T-Net
taking the W-Net's probability map as input (section 2.2). A stage with ``train_with: wnet`` is
trained together with the earlier stage ``wnet`` as one network (``JointCascade``): the CT goes
through the first network, its foreground probability (sigmoid, or 1 - background for softmax) is
the ``prob:<first>`` input channel of the second network, and the loss of the later stage (over
both stages' target channels: ``region_dice`` gives L_whole + L_tumor) flows back through both.
Training at prediction time and training time therefore see the same kind of prior: the first
network's own soft output.

The joint job reads the later stage's cache, patch, optimizer, schedule, sampler and augmentation;
its checkpoints live in ``<later>/fold_<k>/joint/`` (resumable as any stage's), and after training
``export_split`` writes each network's weights as an ordinary checkpoint of its own stage, so
inference (``load_run``, ``predict_case``) runs the cascade as usual.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kitseg.errors import KitsegError
from kitseg.recipes.schema import Recipe, Stage, TargetSpec
from kitseg.stages.checkpoint import network_record

JOINT = "joint_cascade"  # the network record name of a joint model (never an inference network)
_KEEP = ("format", "version", "precision", "fold", "epoch", "epochs", "ema_dice", "val_dice", "best_ema_dice",
         "best_epoch", "finished")


class JointCascade(nn.Module):
    """first(x) -> probability -> second(inputs with that probability); outputs [first, second] channels."""

    def __init__(self, first: nn.Module, second: nn.Module, first_kind: str, second_inputs: list[str], first_name: str):
        super().__init__()
        if getattr(first, "deep_supervision", False) or getattr(second, "deep_supervision", False):
            raise KitsegError("joint training (train_with) does not take networks with deep supervision")
        self.first, self.second = first, second
        self.first_kind, self.second_inputs, self.first_name = first_kind, list(second_inputs), first_name
        self.dims = getattr(second, "dims", 3)
        self.deep_supervision = False
        self.size_divisor = tuple(max(a, b) for a, b in zip(first.size_divisor, second.size_divisor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.first(x)
        if self.first_kind == "softmax":
            prob = 1.0 - torch.softmax(a.float(), 1)[:, :1]
        else:
            prob = torch.sigmoid(a.float()).amax(1, keepdim=True)
        channels = [x if item == "ct" else prob.to(x.dtype) for item in self.second_inputs]
        b = self.second(torch.cat(channels, 1))
        return torch.cat([a, b], 1)


def joint_pair(recipe: Recipe, stage: Stage) -> tuple[Stage, Stage]:
    """(first, later) of a ``train_with`` stage, checked: same grid, the first's output as a ``prob:`` input."""
    first = recipe.stage(stage.train_with)
    if first.inputs != ["ct"] or sorted(stage.inputs) != sorted(["ct", f"prob:{first.name}"]):
        raise KitsegError(f"stage {stage.name!r}: train_with {first.name!r} needs inputs [ct, prob:{first.name}] "
                          f"and stage {first.name!r} with inputs [ct]")
    if first.preprocess != stage.preprocess or first.roi_from != stage.roi_from:
        raise KitsegError(f"stage {stage.name!r}: train_with {first.name!r} needs both stages on one grid "
                          "(the same preprocess and roi_from)")
    if first.target.kind != "sigmoid" or stage.target.kind != "sigmoid" or \
            set(first.target.classes) & set(stage.target.classes):
        raise KitsegError(f"stage {stage.name!r}: train_with needs sigmoid targets with distinct class names")
    return first, stage


def joint_stage(first: Stage, later: Stage) -> Stage:
    """The training stage of the pair: the later stage's settings, the first's inputs, both targets."""
    target = TargetSpec(kind="sigmoid", classes={**first.target.classes, **later.target.classes})
    return later.model_copy(update={"inputs": list(first.inputs), "target": target, "train_with": None})


def joint_record(first: Stage, later: Stage) -> dict:
    return {"name": JOINT, "in_channels": first.in_channels, "out_channels": len(first.target.classes)
            + len(later.target.classes), "params": {"first": network_record(first), "second": network_record(later),
                                                     "first_kind": first.target.kind, "first_name": first.name,
                                                     "second_inputs": [str(i) for i in later.inputs]}}


def build_joint(record: dict) -> JointCascade:
    from kitseg.nets import build_network

    p = record["params"]
    a, b = p["first"], p["second"]
    return JointCascade(build_network(a["name"], a["in_channels"], a["out_channels"], **a["params"]),
                        build_network(b["name"], b["in_channels"], b["out_channels"], **b["params"]),
                        p["first_kind"], p["second_inputs"], p["first_name"])


def export_split(joint_dir: Path, run_dir: Path, first: Stage, later: Stage, fold: int, member: int = 0
                 ) -> list[Path]:
    """Write the joint checkpoints' two networks as ordinary checkpoints of ``first`` and ``later``."""
    from kitseg.stages.checkpoint import BEST, LAST, fold_dir, load_checkpoint, save_checkpoint
    written = []
    for name in (BEST, LAST):
        src = joint_dir / name
        if not src.is_file():
            continue
        ck = load_checkpoint(src, "cpu")
        for prefix, stage in (("first.", first), ("second.", later)):
            sub = {k[len(prefix):]: v for k, v in ck["model"].items() if k.startswith(prefix)}
            out = {**{k: ck[k] for k in _KEEP if k in ck}, "network": network_record(stage), "stage": stage.name,
                   "stage_spec": stage.model_dump_json(), "model": sub, "trained_with": JOINT}
            path = fold_dir(run_dir, stage.name, fold, member) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(path, out)
            written.append(path)
    return written


__all__ = ["JOINT", "JointCascade", "build_joint", "export_split", "joint_pair", "joint_record", "joint_stage"]
