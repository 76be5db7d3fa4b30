"""Ensembles: average probabilities over models (folds, repeats, variants) and mirrored inputs.

TuNet section 3.6, eq. 4: ``p_k = 1/M sum_m f_k^m`` (20 models: 4 variants x 5 trainings);
Zhang et al. 2.2: "the final result is aggregated by ensembling"; nnU-Net averages the softmax of
its five folds and of the mirrored inputs. ``EnsemblePredictor`` does this per window, inside the
sliding window, so one blending buffer serves the whole ensemble and the blended result is the
mean over models of each model's blended probabilities (blending is linear).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from kitseg.errors import KitsegError
from kitseg.precision import Precision


def activate(logits: torch.Tensor | Sequence[torch.Tensor], kind: str) -> torch.Tensor:
    """Probabilities from a network's output: softmax over channels, or a sigmoid per channel.

    A deep-supervision list (training mode) gives its first, full-resolution output.
    """
    if isinstance(logits, (list, tuple)):
        logits = logits[0]
    logits = logits.float()
    if kind == "softmax":
        return torch.softmax(logits, 1)
    if kind == "sigmoid":
        return torch.sigmoid(logits)
    raise KitsegError(f"unknown output activation {kind!r}; use softmax or sigmoid")


class EnsemblePredictor:
    """``(B, C, *patch) -> (B, K, *patch)``: the mean probability over models and flips.

    ``flips``: tuples of spatial axes to mirror (``variants.mirror_flips``); ``[()]`` is no TTA.
    ``weights``: one per model (default equal, TuNet eq. 4). ``precision``: the autocast the
    networks run under (``kitseg.precision``; default fp32); the softmax and the mean are fp32.
    """

    def __init__(self, models: Sequence[nn.Module], activation: str = "softmax",
                 flips: Sequence[tuple[int, ...]] = ((),), weights: Sequence[float] | None = None,
                 precision: Precision | None = None):
        self.precision = precision
        if not models:
            raise KitsegError("an ensemble needs at least one model")
        self.models = list(models)
        self.activation = activation
        self.flips = [tuple(f) for f in flips] or [()]
        w = np.ones(len(self.models)) if weights is None else np.asarray(weights, float)
        if w.shape != (len(self.models),) or (w < 0).any() or w.sum() <= 0:
            raise KitsegError(f"ensemble weights must be {len(self.models)} non-negative numbers, got {weights}")
        self.weights = (w / w.sum() / len(self.flips)).tolist()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        acc = None
        for model, w in zip(self.models, self.weights):
            for flip in self.flips:
                dims = [a + 2 for a in flip]
                with self.precision.autocast() if self.precision is not None else contextlib.nullcontext():
                    out = model(torch.flip(x, dims) if dims else x)
                p = activate(out, self.activation)
                if dims:
                    p = torch.flip(p, dims)
                acc = p.mul_(w) if acc is None else acc.add_(p, alpha=w)
        assert acc is not None
        return acc


def average_probabilities(maps: Iterable[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """The (weighted) mean of probability maps of one shape, accumulated one map at a time (float32)."""
    out = None
    total = 0.0
    for i, m in enumerate(maps):
        w = 1.0 if weights is None else float(weights[i])
        m = np.asarray(m, dtype=np.float32)
        if out is None:
            out = m * np.float32(w)
        elif m.shape != out.shape:
            raise KitsegError(f"cannot average probability maps of shapes {out.shape} and {m.shape}")
        else:
            out += m * np.float32(w)
        total += w
    if out is None or total <= 0:
        raise KitsegError("nothing to average: no probability maps (or zero weights)")
    out /= np.float32(total)
    return out


__all__ = ["EnsemblePredictor", "activate", "average_probabilities"]
