"""Where training inputs come from: patches, slice windows or whole volumes of the cached cases.

A ``Sampler`` decides *what* to cut (``Draw``: case, centre, augmentation parameters) from one
numpy Generator seeded explicitly; ``make_sample`` cuts and augments it (a pure function, so it
can run in worker processes and gives the same result anywhere). Sampler modes (``SamplerSpec``):

- ``patch``: random patches; a fraction ``foreground_fraction`` of them (1/3 as nnU-Net) is
  centred on a random voxel of a random foreground class present in the case (classes weighted by
  ``class_weights``, e.g. tumor-centred sampling; all alike by default, as nnU-Net).
- ``slices``: windows of ``patch_size[0]`` consecutive slices (one slice plus context for 2D
  networks); slices holding foreground are ``kidney_slice_oversampling`` times more likely (the
  ResUNet paper: kidney slices "expanded up and down 50 times", 64 consecutive slices, 2.2-2.3).
- ``whole``: the whole cached volume, zero-padded to the network's size divisor (TuNet's
  whole-volume L-Net / W-Net, section 2.1).
- ``hard_case``: cases are drawn in proportion to how hard they were when last seen (the ResUNet
  paper's resampling of difficult samples, section 3.4): half uniform, half by the running mean
  of their loss and of their false-positive fraction.

Every rank of a distributed run draws the same global batch and keeps its share
(``kitseg.training.distributed.shard``), so the sampler state is the same on all ranks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kitseg.errors import KitsegError
from kitseg.recipes.schema import AugmentSpec, SamplerSpec, Stage, TargetSpec
from kitseg.registry import SAMPLERS
from kitseg.stages.inputs import assemble_inputs, background_value, priors_from_label
from kitseg.stages.targets import make_target
from kitseg.training import augment as aug

PRIOR_BIT = 4  # a predicted prior's bit in the label while a patch is cut (labels are 0..3)
MAX_LOCATIONS = 10_000  # foreground voxels remembered per class and case (as nnU-Net)
HARDNESS_MOMENTUM = 0.5  # running mean of a case's loss / false positives: 0.5 old + 0.5 new


@dataclass
class TrainCase:
    """One cached case ready for sampling. ``image`` (Z, Y, X) is the normalized CT and may be a
    memory map; ``locations[k]`` holds up to MAX_LOCATIONS voxels (n, 3) of target class k+1.
    ``prior``: the earlier stage's predicted mask on this grid (uint8 0/1, ``prior_source:
    predicted``), or None: priors come from the label."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    locations: list[np.ndarray]
    fg_slices: np.ndarray
    background: float
    prior: np.ndarray | None = None


def make_train_case(case_id: str, image: np.ndarray, label: np.ndarray, spacing: Sequence[float],
                    target: TargetSpec, seed: int = 0, prior: np.ndarray | None = None) -> TrainCase:
    """Index a case's foreground once (class locations, slices with foreground)."""
    if image.shape != label.shape:
        raise KitsegError(f"case {case_id}: image {image.shape} and label {label.shape} differ in shape")
    rng = np.random.default_rng(seed)
    locations = []
    lab = np.asarray(label)
    for labels in target.classes.values():
        idx = np.flatnonzero(np.isin(lab, labels))
        if idx.size > MAX_LOCATIONS:
            idx = np.sort(rng.choice(idx, MAX_LOCATIONS, replace=False))
        locations.append(np.stack(np.unravel_index(idx, lab.shape), 1).astype(np.int32))
    fg_slices = np.isin(lab, sorted({v for c in target.classes.values() for v in c})).any(axis=(1, 2))
    if prior is not None and np.shape(prior) != lab.shape:
        raise KitsegError(f"case {case_id}: prior {np.shape(prior)} and label {lab.shape} differ in shape")
    return TrainCase(case_id, image, lab, tuple(float(s) for s in spacing), locations, fg_slices,
                     background_value(image), None if prior is None else (np.asarray(prior) > 0).astype(np.uint8))


@dataclass(frozen=True)
class Draw:
    """What to cut: case index, patch centre (z, y, x voxel), foreground-forced or not, augmentation."""

    case: int
    center: tuple[int, int, int]
    fg: bool = False
    aug: aug.AugParams = aug.NONE


@dataclass(frozen=True)
class Geometry:
    """The shape of what a stage's network eats. ``box`` is the 3D region (z, y, x) cut around the
    centre (for 2D networks: ``slices`` slices, the network's ``context_slices``, 1 for plain 2D
    networks); ``whole`` boxes are the padded volume."""

    mode: str
    dims: int
    patch: tuple[int, ...] | None
    slices: int = 1
    divisor: tuple[int, ...] = (1, 1, 1)

    def box(self, case: TrainCase) -> tuple[int, int, int]:
        if self.mode == "whole" or self.patch is None:
            shape = case.image.shape
            div = (1, *self.divisor) if self.dims == 2 else self.divisor
            padded = [int(np.ceil(s / d) * d) for s, d in zip(shape, div)]
            if self.dims == 2:
                padded[0] = self.slices
            return tuple(padded)  # type: ignore[return-value]
        if self.dims == 2:
            return (self.slices, *self.patch)  # type: ignore[return-value]
        return tuple(self.patch)  # type: ignore[return-value]


def stage_geometry(stage: Stage, dims: int, divisor: Sequence[int], slices: int = 1) -> Geometry:
    """Check the stage's patch against the network (dimensions, size divisor) and describe it."""
    mode = stage.sampler.name
    patch = tuple(stage.patch_size) if stage.patch_size is not None else None
    divisor = tuple(int(d) for d in divisor)
    if patch is None and mode != "whole":
        raise KitsegError(f"stage {stage.name!r}: sampler {mode!r} needs a patch_size (or use sampler 'whole')")
    if patch is not None and mode != "whole":
        if len(patch) != dims:
            raise KitsegError(f"stage {stage.name!r}: patch_size {list(patch)} has {len(patch)} axes, the "
                              f"{dims}D network {stage.network.name!r} needs {dims}")
        bad = [p for p, d in zip(patch, divisor) if p % d]
        if bad:
            raise KitsegError(f"stage {stage.name!r}: patch_size {list(patch)} must be divisible by {list(divisor)} "
                              f"per axis (the network's poolings); e.g. "
                              f"{[int(np.ceil(p / d) * d) for p, d in zip(patch, divisor)]}")
    if slices < 1 or slices % 2 == 0:
        raise KitsegError(f"stage {stage.name!r}: a 2.5D network needs an odd number of context slices, got {slices}")
    return Geometry("whole" if patch is None else mode, dims, patch, slices, divisor)


def _start_range(size: int, patch: int) -> tuple[int, int]:
    """Patch starts that keep the patch inside the volume (or the volume inside the patch)."""
    return min(0, size - patch), max(0, size - patch)


# ---- where a box is centred, per sampler (registered in kitseg.registry.SAMPLERS) -------------------
def whole_center(sampler: Sampler, case: TrainCase, force_fg: bool | None = None
                 ) -> tuple[tuple[int, int, int], bool]:
    """The whole (padded) volume; for a 2D network: whole slices, drawn as the slices sampler does."""
    if sampler.geometry.dims == 3:
        return tuple(b // 2 for b in sampler.geometry.box(case)), False  # type: ignore[return-value]
    return slice_center(sampler, case, force_fg)


def slice_center(sampler: Sampler, case: TrainCase, force_fg: bool | None = None
                 ) -> tuple[tuple[int, int, int], bool]:
    """A slice drawn with kidney slices oversampled (ResUNet paper x50), a random in-plane position."""
    g, rng = sampler.geometry, sampler.rng
    shape = case.image.shape
    box = g.box(case)
    w = np.where(case.fg_slices, sampler.spec.kidney_slice_oversampling, 1.0)
    z = int(rng.choice(shape[0], p=w / w.sum()))
    if g.dims == 2:
        cz = z
    else:
        lo, hi = _start_range(shape[0], box[0])
        cz = int(np.clip(z - rng.integers(0, box[0]), lo, hi)) + box[0] // 2
    if g.mode == "whole":  # 2D network on whole slices
        in_plane = [b // 2 for b in box[1:]]
    else:
        in_plane = [int(rng.integers(*(np.add(_start_range(s, b), (0, 1))))) + b // 2
                    for s, b in zip(shape[1:], box[1:])]
    return (cz, *in_plane), bool(case.fg_slices[z])  # type: ignore[return-value]


def patch_center(sampler: Sampler, case: TrainCase, force_fg: bool | None = None
                 ) -> tuple[tuple[int, int, int], bool]:
    """A patch around a foreground voxel with probability ``foreground_fraction`` (nnU-Net), else anywhere."""
    rng = sampler.rng
    shape = case.image.shape
    box = sampler.geometry.box(case)
    present = [k for k, loc in enumerate(case.locations) if len(loc)]
    want_fg = rng.random() < sampler.spec.foreground_fraction if force_fg is None else force_fg
    if want_fg and present:
        if sampler.class_weights is None:
            k = present[int(rng.integers(len(present)))]
        else:
            w = sampler.class_weights[present]
            k = present[int(rng.choice(len(present), p=w / w.sum()))]
        loc = case.locations[k]
        voxel = loc[int(rng.integers(len(loc)))]
        center = []
        for v, s, b in zip(voxel, shape, box):
            lo, hi = _start_range(s, b)
            center.append(int(np.clip(int(v) - b // 2, lo, hi)) + b // 2)
        return tuple(center), True  # type: ignore[return-value]
    center = [int(rng.integers(lo, hi + 1)) + b // 2
              for (lo, hi), b in ((_start_range(s, b), b) for s, b in zip(shape, box))]
    return tuple(center), False  # type: ignore[return-value]


class Sampler:
    """Draws ``Draw``s; its whole state (numpy bit generator, hardness) goes into checkpoints."""

    def __init__(self, cases: list[TrainCase], spec: SamplerSpec, geometry: Geometry, augment: AugmentSpec,
                 seed: int, classes: Sequence[str] = ()):
        """``classes``: the target's class names in order (``TrainCase.locations``), which
        ``spec.class_weights`` refers to."""
        if not cases:
            raise KitsegError("no training cases to sample from")
        self.cases, self.spec, self.geometry, self.augment = cases, spec, geometry, augment
        self.class_weights: np.ndarray | None = None
        if spec.class_weights:
            unknown = sorted(set(spec.class_weights) - set(classes))
            if unknown:
                raise KitsegError(f"sampler class_weights names {', '.join(unknown)}; the classes are "
                                  f"{', '.join(classes) or 'not given'}")
            self.class_weights = np.array([float(spec.class_weights.get(c, 1.0)) for c in classes])
        self.rng = np.random.default_rng(seed)
        n = len(cases)
        self.loss = np.ones(n)
        self.fp = np.zeros(n)
        self.draws = 0

    # ---- what to draw --------------------------------------------------------------------------
    def case_weights(self) -> np.ndarray:
        n = len(self.cases)
        uniform = np.full(n, 1.0 / n)
        if not self.spec.hard_case:
            return uniform
        hard = self.loss / self.loss.sum() if self.loss.sum() > 0 else uniform
        if self.fp.sum() > 0:
            hard = 0.5 * hard + 0.5 * self.fp / self.fp.sum()
        return 0.5 * uniform + 0.5 * hard

    def draw(self, n: int, augment: bool = True) -> list[Draw]:
        """The next ``n`` draws (the global batch of a distributed run)."""
        out = []
        weights = self.case_weights()
        for _ in range(n):
            ci = int(self.rng.choice(len(self.cases), p=weights))
            center, fg = self._center(self.cases[ci])
            params = aug.sample_params(self.augment, self.rng, self.geometry.dims, self.cases[ci].spacing) \
                if augment else aug.NONE
            out.append(Draw(ci, center, fg, params))
            self.draws += 1
        return out

    def fixed_draws(self, per_case: int) -> list[Draw]:
        """``per_case`` unaugmented draws of every case, alternating foreground-centred and random
        (validation patches: the same every epoch when drawn from a sampler with a fixed seed)."""
        out = []
        for ci, case in enumerate(self.cases):
            n = 1 if self.geometry.mode == "whole" and self.geometry.dims == 3 else per_case
            for j in range(n):
                center, fg = self._center(case, force_fg=(j % 2 == 0))
                out.append(Draw(ci, center, fg, aug.NONE))
        return out

    def _center(self, case: TrainCase, force_fg: bool | None = None) -> tuple[tuple[int, int, int], bool]:
        """The centre of the next box in ``case`` and whether it was drawn on foreground."""
        return SAMPLERS.get(self.geometry.mode)(self, case, force_fg)

    # ---- hard cases ----------------------------------------------------------------------------
    def update_hardness(self, case_indices: Sequence[int], losses: Sequence[float],
                        false_positives: Sequence[float]) -> None:
        """Record how hard the drawn cases were (per-sample loss, false-positive voxel fraction)."""
        m = HARDNESS_MOMENTUM
        for ci, loss, fp in zip(case_indices, losses, false_positives):
            self.loss[ci] = m * self.loss[ci] + (1 - m) * float(loss)
            self.fp[ci] = m * self.fp[ci] + (1 - m) * float(fp)

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"rng": json.dumps(self.rng.bit_generator.state), "loss": torch.from_numpy(self.loss.copy()),
                "fp": torch.from_numpy(self.fp.copy()), "draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.loss = state["loss"].numpy().astype(np.float64).copy()
        self.fp = state["fp"].numpy().astype(np.float64).copy()
        self.draws = int(state["draws"])
        if len(self.loss) != len(self.cases):
            raise KitsegError("the checkpoint's sampler was made for a different number of training cases")


def crop_padded(arr: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float) -> np.ndarray:
    """``arr[start:start + size]`` on every axis, filled with ``fill`` where the box leaves the array."""
    out = np.full(tuple(size), fill, dtype=arr.dtype)
    src, dst = [], []
    for s0, n, dim in zip(start, size, arr.shape):
        lo, hi = max(s0, 0), min(s0 + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s0, hi - s0))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def make_sample(case: TrainCase, draw: Draw, geometry: Geometry, stage: Stage,
                targets: dict[str, TargetSpec]) -> tuple[np.ndarray, np.ndarray]:
    """Cut, augment and assemble one training sample: (inputs (C, *spatial), target) as numpy.

    For 2D networks the ``geometry.slices`` slices become channels, slice-major (channel
    ``s * n_inputs + c``, as ``kitseg.nets.vnet25d_ms`` expects) and the target is the centre slice.
    """
    patch = geometry.box(case)
    box = aug.box_size(draw.aug, patch)
    center = np.add(draw.center, draw.aug.translate)
    start = [int(c) - p // 2 - (b - p) // 2 for c, p, b in zip(center, patch, box)]
    ct = crop_padded(case.image, start, box, case.background).astype(np.float32, copy=False)
    lab = crop_padded(case.label, start, box, 0)
    if case.prior is not None:  # the predicted prior rides along in bit 4: one crop, warp and flip for both
        lab = lab | (crop_padded(case.prior, start, box, 0) << PRIOR_BIT)
    ct, lab = aug.apply_spatial(ct, lab, draw.aug, patch)
    ct, lab = aug.apply_flips([ct, lab], draw.aug)
    ct = aug.apply_intensity(ct, draw.aug, geometry.dims)
    ct, lab = aug.apply_thin_fov(ct, lab, draw.aug, case.spacing[0], case.background)
    if case.prior is not None:
        given = (lab >> PRIOR_BIT).astype(np.float32)
        lab = lab & ((1 << PRIOR_BIT) - 1)
        priors = {s: given for s in stage.prior_stages}
    else:
        priors = priors_from_label(lab, stage, targets)
    if draw.aug.prior_block is not None:
        priors = {k: aug.degrade_prior(v, draw.aug, case.spacing) for k, v in priors.items()}
    x = assemble_inputs(ct, priors, stage, case.background)
    y = make_target(lab, stage.target)
    if geometry.dims == 2:
        k = geometry.slices // 2
        x = x.transpose(1, 0, 2, 3).reshape(-1, *x.shape[2:])
        y = y[k] if stage.target.kind == "softmax" else y[:, k]
    return x, y


def collate(samples: Sequence[tuple[np.ndarray, np.ndarray]], softmax: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples into a batch (padding whole volumes of different sizes to the largest)."""
    xs, ys = zip(*samples)
    shape = np.max([x.shape[1:] for x in xs], axis=0)
    if any(tuple(x.shape[1:]) != tuple(shape) for x in xs):
        xs = [crop_padded(x, (0,) * x.ndim, (x.shape[0], *shape), float(x.min())) for x in xs]
        ys = [crop_padded(y, (0,) * y.ndim, (*y.shape[: y.ndim - len(shape)], *shape), 0) for y in ys]
    x = torch.from_numpy(np.stack(xs))
    y = torch.from_numpy(np.stack(ys))
    return x, (y.long() if softmax else y.float())
