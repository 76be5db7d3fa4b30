"""Segmentation losses of the papers, built from a recipe's ``LossSpec`` and ``TargetSpec``.

``build_loss(spec, target)`` returns a callable ``loss(outputs, target, epoch=0) -> scalar tensor``.
``outputs`` are logits (N, C, *spatial) or, for deep supervision, a list of them (finest first).
The target is what ``kitseg.stages.targets.make_target`` builds, as a tensor: a class map
(N, *spatial) of integers for softmax targets, binary channels (N, C, *spatial) for sigmoid ones.

Loss names (``LossSpec.name``, registered in ``kitseg.registry.LOSSES``) and their sources:

- ``dice``: soft Dice, softmax over the classes (background left out by default) or per sigmoid
  channel. Used alone it can collapse (MIC-DKFZ/nnUNet#1395): prefer ``dice_ce``.
- ``ce``: cross-entropy (softmax) or binary cross-entropy (sigmoid).
- ``dice_ce``: Dice + cross-entropy, "a summation of Cross Entropy Loss and Dice Loss" (Zhang et
  al., section 3, experiments); also nnU-Net's default.
- ``weighted_ce``: cross-entropy with class weights, 1.0 kidney, 2.0 tumor, 0.2 background in the
  3D FCN-PPM paper (section II.A.3, eq. 1): ``params: {class_weights: {background: 0.2, ...}}``.
- ``focal_dice``: focal loss + weighted Dice, the 2.5D VNet tumor stage (ResUNet/VNet paper,
  section 3.3: "combines focal loss and weighted dice loss"); params ``gamma`` (2), ``alpha``,
  ``dice_class_weights``.
- ``region_dice``: TuNet's L = L_whole + L_tumor (section 3.2, eq. 1-2): the sum of the soft Dice
  losses of overlapping sigmoid regions (whole = {1, 2}, tumor = {2}).
- ``bce_dice``: binary cross-entropy + soft Dice on sigmoid regions.

Soft Dice of one class and sample: 1 - (2 TP + s) / (2 TP + FP + FN + s) with soft TP/FP/FN and
s = ``smooth`` (1e-5), averaged over samples and classes: the same definition as MONAI's
``DiceLoss`` (tests compare them). TuNet writes -2 sum(uv) / (sum(u) + sum(v) + eps); 1 - Dice has
the same gradient.

Deep supervision (``LossSpec.deep_supervision``): the loss of head i is weighted by
``ds_weights(spec, n_levels, epoch)[i]``; a head smaller than the target gets the target
downsampled (nearest for class maps, max pooling for binary region channels, so that small tumors
are not lost).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kitseg.errors import KitsegError
from kitseg.recipes.schema import DeepSupervisionSpec, LossSpec, TargetSpec
from kitseg.registry import LOSSES

Outputs = torch.Tensor | Sequence[torch.Tensor]

_DICE = ("include_background", "smooth", "batch_dice")


@dataclass(frozen=True)
class LossKind:
    """One registered loss (``kitseg.registry.LOSSES``): its parameters and how it combines the terms.

    ``combine(terms, logits, y)`` with ``terms`` the stage's configured ``dice``, ``ce`` and ``focal``
    functions and weights (``_Terms``).
    """

    params: frozenset[str]
    combine: Callable[[_Terms, torch.Tensor, torch.Tensor], torch.Tensor]
    sigmoid_only: bool = False


@dataclass(frozen=True)
class _Terms:
    dice: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    focal: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    w_dice: float
    w_other: float


DICE = LossKind(frozenset(_DICE), lambda t, x, y: t.dice(x, y))
CE = LossKind(frozenset({"class_weights"}), lambda t, x, y: t.ce(x, y))
WEIGHTED_CE = LossKind(frozenset({"class_weights"}), lambda t, x, y: t.ce(x, y))
DICE_CE = LossKind(frozenset({*_DICE, "dice_weight", "ce_weight", "class_weights"}),
                   lambda t, x, y: t.w_dice * t.dice(x, y) + t.w_other * t.ce(x, y))
FOCAL_DICE = LossKind(frozenset({*_DICE, "gamma", "alpha", "dice_class_weights", "focal_weight", "dice_weight"}),
                      lambda t, x, y: t.w_dice * t.dice(x, y) + t.w_other * t.focal(x, y))
# TuNet sums the regions' Dice losses instead of averaging them
REGION_DICE = LossKind(frozenset({"smooth", "batch_dice"}), lambda t, x, y: t.dice(x, y) * x.shape[1],
                       sigmoid_only=True)
BCE_DICE = LossKind(frozenset({"smooth", "batch_dice", "dice_weight", "ce_weight"}),
                    lambda t, x, y: t.w_dice * t.dice(x, y) + t.w_other * t.ce(x, y), sigmoid_only=True)


# ---- the pieces ------------------------------------------------------------------------------------
def one_hot(class_map: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(N, *spatial) integer class map -> (N, C, *spatial) float one-hot."""
    return F.one_hot(class_map.long(), n_classes).movedim(-1, 1).to(torch.float32)


def soft_dice_loss(probs: torch.Tensor, truth: torch.Tensor, smooth: float = 1e-5, batch_dice: bool = False,
                   class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over samples and channels of 1 - (2 TP + s) / (2 TP + FP + FN + s); inputs (N, C, *spatial).

    ``batch_dice`` pools the batch before the ratio (nnU-Net's batch Dice). ``class_weights`` (C,)
    turns the mean over channels into a weighted mean.
    """
    axes = [0, *range(2, probs.ndim)] if batch_dice else list(range(2, probs.ndim))
    tp = (probs * truth).sum(axes)
    denom = probs.sum(axes) + truth.sum(axes)  # = 2 TP + FP + FN
    loss = 1 - (2 * tp + smooth) / (denom + smooth)  # (N, C) or (C,)
    if class_weights is None:
        return loss.mean()
    w = class_weights.to(loss)
    return (loss * w).sum(-1).mean() / w.sum()


def focal_loss(logits: torch.Tensor, class_map: torch.Tensor, gamma: float = 2.0,
               alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax focal loss, mean over voxels of -alpha_t (1 - p_t)^gamma log p_t (Lin et al. 2017)."""
    logp = F.log_softmax(logits, 1).gather(1, class_map.long().unsqueeze(1)).squeeze(1)
    loss = -((1 - logp.exp()) ** gamma) * logp
    if alpha is not None:
        loss = loss * alpha.to(loss)[class_map.long()]
    return loss.mean()


def sigmoid_focal_loss(logits: torch.Tensor, truth: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss per channel, mean over voxels and channels."""
    bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
    p_t = torch.exp(-bce)
    return (((1 - p_t) ** gamma) * bce).mean()


def class_vector(value: Any, target: TargetSpec, what: str) -> torch.Tensor:
    """Per-channel weights from a list (channel order) or a mapping {class name: weight}.

    For softmax targets the channels are background followed by ``target.classes``.
    """
    names = (["background"] if target.kind == "softmax" else []) + list(target.classes)
    if isinstance(value, dict):
        unknown = set(value) - set(names)
        missing = set(names) - set(value)
        if unknown or missing:
            raise KitsegError(f"loss {what}: give a weight for each of {names} "
                              f"(unknown: {sorted(unknown)}, missing: {sorted(missing)})")
        value = [value[n] for n in names]
    try:
        vec = torch.tensor([float(v) for v in value], dtype=torch.float32)
    except (TypeError, ValueError):
        raise KitsegError(f"loss {what} must be a list of numbers or a mapping class -> number, got {value!r}") \
            from None
    if vec.numel() != len(names) or bool((vec < 0).any()):
        raise KitsegError(f"loss {what}: expected {len(names)} non-negative weights for {names}, got {value!r}")
    return vec


# ---- one output ------------------------------------------------------------------------------------
def _single_loss(spec: LossSpec, target: TargetSpec) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of one logits tensor against its target, for the spec's name and params."""
    p = dict(spec.params)
    name = spec.name
    kind: LossKind = LOSSES.get(name)
    unknown = set(p) - kind.params
    if unknown:
        raise KitsegError(f"loss {name!r} has no parameter(s) {sorted(unknown)}; known: {sorted(kind.params)}")
    smooth = float(p.get("smooth", 1e-5))
    batch_dice = bool(p.get("batch_dice", False))
    softmax = target.kind == "softmax"
    n_out = target.out_channels
    if kind.sigmoid_only and softmax:
        raise KitsegError(f"loss {name!r} needs a sigmoid target (overlapping regions); this stage's target is softmax")
    if "alpha" in p and not softmax:
        raise KitsegError(f"loss {name!r}: 'alpha' is for softmax targets; use dice_class_weights with sigmoid ones")
    skip_bg = softmax and not bool(p.get("include_background", False))
    cw = class_vector(p["class_weights"], target, "class_weights") if "class_weights" in p else None
    if name == "weighted_ce" and cw is None:
        raise KitsegError("loss 'weighted_ce' needs params.class_weights, e.g. {background: 0.2, kidney: 1.0, "
                          "tumor: 2.0} (3D FCN-PPM paper, section II.A.3)")
    dcw = class_vector(p["dice_class_weights"], target, "dice_class_weights") if "dice_class_weights" in p else None
    if dcw is not None and skip_bg:
        dcw = dcw[1:]
    alpha = class_vector(p["alpha"], target, "alpha") if "alpha" in p else None
    gamma = float(p.get("gamma", 2.0))
    w_dice = float(p.get("dice_weight", 1.0))
    w_other = float(p.get("ce_weight", p.get("focal_weight", 1.0)))

    def dice(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if softmax:
            probs, truth = torch.softmax(logits, 1), one_hot(y, n_out)
            if skip_bg:
                probs, truth = probs[:, 1:], truth[:, 1:]
        else:
            probs, truth = torch.sigmoid(logits), y
        return soft_dice_loss(probs, truth, smooth, batch_dice, dcw)

    def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if softmax:
            return F.cross_entropy(logits, y.long(), weight=None if cw is None else cw.to(logits))
        if cw is not None:  # per-channel weights of the binary cross-entropy
            per = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
            return (per * cw.to(per).view(1, -1, *[1] * (per.ndim - 2))).mean()
        return F.binary_cross_entropy_with_logits(logits, y)

    def focal(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, y, gamma, alpha) if softmax else sigmoid_focal_loss(logits, y, gamma)

    terms = _Terms(dice, ce, focal, w_dice, w_other)

    def fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if not softmax:
            y = y.to(logits.dtype)
        if logits.shape[1] != n_out:
            raise KitsegError(f"the network gives {logits.shape[1]} output channels, the target needs {n_out}")
        return kind.combine(terms, logits, y)

    return fn


# ---- deep supervision ------------------------------------------------------------------------------
def ds_weights(spec: DeepSupervisionSpec, n_levels: int, epoch: int = 0) -> list[float]:
    """Weights of the ``n_levels`` deep-supervision outputs (finest first) at ``epoch`` (0-based).

    ``"halving"``: 1, 1/2, 1/4, ... normalised to sum 1 (nnU-Net). A list is used as written, cut
    or padded with zeros to ``n_levels`` (a list longer than the heads of a shrunk --tiny network
    still works). The auxiliary weights (all but the finest) are multiplied by
    ``decay ** (epoch // decay_every)``: the ResUNet paper's L = mu (L1 + L2 + L3) + L4 with
    mu = 0.33 times 0.8 every 15 epochs (section 2.1) is ``weights: [1, 0.33, 0.33, 0.33], decay: 0.8,
    decay_every: 15``.
    """
    if n_levels < 1:
        raise KitsegError("deep supervision needs at least one output")
    if spec.weights == "halving":
        w = [0.5**i for i in range(n_levels)]
        total = sum(w)
        w = [x / total for x in w]
    else:
        w = [float(x) for x in spec.weights[:n_levels]] + [0.0] * max(0, n_levels - len(spec.weights))
    if spec.decay_every > 0 and spec.decay != 1.0:
        factor = spec.decay ** (epoch // spec.decay_every)
        w = [w[0]] + [x * factor for x in w[1:]]
    return w


def downsample_target(y: torch.Tensor, size: Sequence[int], softmax: bool) -> torch.Tensor:
    """A target at a head's spatial ``size``: nearest for class maps, max pooling for binary channels."""
    if tuple(y.shape[-len(size):]) == tuple(size):
        return y
    if softmax:
        return F.interpolate(y.unsqueeze(1).float(), size=tuple(size), mode="nearest").squeeze(1).to(y.dtype)
    pool = F.adaptive_max_pool3d if len(size) == 3 else F.adaptive_max_pool2d
    return pool(y.float(), tuple(size)).to(y.dtype)


class Loss:
    """A built loss: ``loss(outputs, target, epoch=0)``; outputs may be a deep-supervision list."""

    def __init__(self, spec: LossSpec, target: TargetSpec):
        self.spec = spec
        self.target = target
        self.single = _single_loss(spec, target)

    def __call__(self, outputs: Outputs, y: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.single(outputs, y)
        outputs = list(outputs)
        if self.spec.deep_supervision is None:  # a list without weights: train the finest output only
            return self.single(outputs[0], y)
        weights = ds_weights(self.spec.deep_supervision, len(outputs), epoch)
        softmax = self.target.kind == "softmax"
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights, outputs):
            if w:
                total = total + w * self.single(out, downsample_target(y, out.shape[2:], softmax))
        return total


def build_loss(spec: LossSpec, target: TargetSpec) -> Loss:
    """The loss of a stage (``stage.loss``, ``stage.target``); parameters are checked here, not mid-training."""
    return Loss(spec, target)
