"""Dataset labels <-> what a stage learns: the one place where this mapping lives.

``make_target(label, target)``: softmax targets give an integer class map (0 background, k = the
k-th entry of ``target.classes``); sigmoid targets give one binary channel per entry (regions may
overlap, e.g. TuNet's whole = {1, 2} and tumor = {2}). ``classes_to_labels`` goes back to dataset
labels (inference uses it): each class is painted with its own label, largest region first, so
nested regions come out right:

- softmax {kidney: [1, 2]} -> 1; {kidney: [1], tumor: [2]} -> 1, 2;
- sigmoid {whole: [1, 2], tumor: [2]} -> whole painted 1, then tumor painted 2 on top;
- KiTS23 regions {kidney_and_masses: [1, 2, 3], masses: [2, 3], tumor: [2]} -> 1, 3, 2 (the
  KiTS21/23 overlap order of the official kits21/kits23 repositories).

The label of a class is the smallest of its labels not covered by a smaller class nested in it.
"""

from __future__ import annotations

import numpy as np

from kitseg.errors import KitsegError
from kitseg.recipes.schema import TargetSpec


def check_target(target: TargetSpec) -> None:
    """Refuse empty classes and overlapping softmax classes (a voxel has one softmax class)."""
    seen: dict[int, str] = {}
    for name, labels in target.classes.items():
        if not labels or any(int(v) < 1 for v in labels):
            raise KitsegError(f"target class {name!r} must list dataset labels >= 1, got {labels}")
        if target.kind == "softmax":
            for v in labels:
                if v in seen:
                    raise KitsegError(f"softmax target classes {seen[v]!r} and {name!r} both contain label {v}; "
                                      "use kind: sigmoid for overlapping regions")
                seen[v] = name


def make_target(label: np.ndarray, target: TargetSpec) -> np.ndarray:
    """Dataset labels (any shape) -> uint8 class map (softmax) or (C, ...) binary channels (sigmoid)."""
    check_target(target)
    label = np.asarray(label)
    if target.kind == "softmax":
        lut = np.zeros(max(256, int(label.max(initial=0)) + 1), np.uint8)
        for k, labels in enumerate(target.classes.values(), start=1):
            lut[np.asarray(labels, int)] = k
        return lut[label.astype(np.intp, copy=False)] if label.dtype != np.uint8 else lut[label]
    return np.stack([np.isin(label, labels) for labels in target.classes.values()]).astype(np.uint8)


def class_labels(target: TargetSpec) -> list[int]:
    """The dataset label each class is written back as (see the module docstring)."""
    check_target(target)
    sets = [set(int(v) for v in labels) for labels in target.classes.values()]
    out = []
    for s in sets:
        nested = set().union(*[o for o in sets if o < s])
        own = s - nested
        out.append(min(own or s))
    return out


def foreground_labels(target: TargetSpec) -> list[int]:
    """Every dataset label a stage predicts (the union of its classes): its foreground."""
    return sorted({int(v) for labels in target.classes.values() for v in labels})


def classes_to_labels(class_map: np.ndarray, target: TargetSpec) -> np.ndarray:
    """A stage's prediction -> uint8 dataset labels.

    softmax: ``class_map`` is the argmax (integers 0..C-1, any shape). sigmoid: ``class_map`` is
    (C, ...) binary (thresholded) channels; larger regions are painted first, nested ones on top.
    """
    labels = class_labels(target)
    class_map = np.asarray(class_map)
    if target.kind == "softmax":
        if class_map.size and int(class_map.max()) > len(labels):
            raise KitsegError(f"class map has class {int(class_map.max())}; the target has {len(labels)} classes")
        lut = np.array([0, *labels], np.uint8)
        return lut[class_map.astype(np.intp, copy=False)]
    if class_map.shape[0] != len(labels):
        raise KitsegError(f"expected {len(labels)} sigmoid channels, got an array of shape {class_map.shape}")
    out = np.zeros(class_map.shape[1:], np.uint8)
    sizes = [len(v) for v in target.classes.values()]
    for i in sorted(range(len(labels)), key=lambda i: -sizes[i]):
        out[np.asarray(class_map[i]).astype(bool)] = labels[i]
    return out


def labels_from_probabilities(probs: np.ndarray, target: TargetSpec) -> np.ndarray:
    """Dataset labels (uint8) of a stage's (K, z, y, x) probabilities: softmax argmax, sigmoid > 0.5."""
    return classes_to_labels(probs.argmax(0) if target.kind == "softmax" else probs > 0.5, target)


def foreground_probability(probs: np.ndarray, kind: str) -> np.ndarray:
    """P(any class) from a stage's probabilities: 1 - background (softmax) or the largest sigmoid."""
    if kind == "softmax":
        return 1.0 - probs[0]
    return probs.max(axis=0)
