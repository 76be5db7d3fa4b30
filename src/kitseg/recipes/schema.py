"""The recipe schema: a paper's method as pure, validated data.

A recipe is an ordered list of stages (a cascade). Each stage names its network, its inputs (CT,
an earlier stage's mask or probability), what it learns to predict, its preprocessing, crop,
patch and batch size, loss, optimizer, schedule, sampler, augmentation, inference scheme and
post-processing. A recipe-level ``final`` step turns the stages' outputs into one label map.
Every model forbids unknown keys, so a misspelt key is refused with its name.

Citations live beside the values: ``citations`` maps a dotted key (``stages.0.optimizer.lr``)
to the paper section it comes from; ``deviations`` maps a key to the reason we differ from the
paper. ``docs/METHODS.md`` is generated from them (``kitseg recipes --markdown``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from kitseg.errors import KitsegError
from kitseg.preprocessing.spec import PreprocessSpec
from kitseg.registry import FINAL_OPS, INFERENCE_MODES, LOSSES, PROBABILITY_OPS, SAMPLERS, STAGE_OPS, Registry

SCHEMA_VERSION = 1


def _registered(registry: Registry):
    """A str field whose value must be a name of ``registry`` (the error lists the known names)."""
    def check(name: str) -> str:
        try:
            return registry.check(name)
        except KitsegError as exc:
            raise ValueError(str(exc)) from None
    return Annotated[str, AfterValidator(check)]


class StageInput(str):
    """One input channel of a stage, written ``ct`` or ``<kind>:<stage>`` in a recipe.

    ``kind``: ``ct`` (the normalized CT), or an earlier stage's output: ``mask`` (its foreground),
    ``prob`` (its foreground probability) or ``masked_ct`` (the CT inside its foreground).
    ``stage``: that earlier stage (None for ``ct``). It is a ``str`` so that recipes and run folders
    keep the text form; the text is parsed here only.
    """

    KINDS = ("ct", "mask", "prob", "masked_ct")
    kind: str
    stage: str | None

    def __new__(cls, text: str) -> StageInput:
        kind, _, ref = str(text).partition(":")
        if kind not in cls.KINDS or (kind == "ct") == bool(ref):
            raise ValueError(f"input {text!r}: use 'ct', 'masked_ct:<stage>', 'mask:<stage>' or 'prob:<stage>'")
        obj = super().__new__(cls, text)
        obj.kind, obj.stage = kind, ref or None
        return obj

    @classmethod
    def of(cls, kind: str, stage: str | None = None) -> StageInput:
        return cls(kind if stage is None else f"{kind}:{stage}")


StageInputText = Annotated[str, AfterValidator(StageInput)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class NetworkSpec(_Strict):
    """A network from ``kitseg.nets.NETWORKS`` and its constructor parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class TargetSpec(_Strict):
    """What a stage predicts, as output channels built from dataset labels.

    ``kind="softmax"``: channel 0 is background and channel k (k >= 1) is the k-th entry of
    ``classes`` (each entry lists the dataset labels that form it; they must not overlap).
    ``kind="sigmoid"``: one independent channel per entry (regions may overlap, e.g. TuNet's
    whole = {1, 2} and tumor = {2}).
    """

    kind: Literal["softmax", "sigmoid"] = "softmax"
    classes: dict[str, list[int]]

    @property
    def out_channels(self) -> int:
        return len(self.classes) + (1 if self.kind == "softmax" else 0)


class DeepSupervisionSpec(_Strict):
    """Weights of the deep-supervision outputs, finest first.

    ``weights="halving"`` is nnU-Net's 1, 1/2, 1/4, ... normalised; a list gives them explicitly.
    ``decay`` and ``decay_every`` multiply the auxiliary weights every N epochs (the ResUNet
    paper: mu = 0.33, times 0.8 every 15 epochs).
    """

    weights: Literal["halving"] | list[float] = "halving"
    decay: float = 1.0
    decay_every: int = 0


class LossSpec(_Strict):
    name: _registered(LOSSES) = "dice_ce"  # type: ignore[valid-type]
    params: dict[str, Any] = Field(default_factory=dict)
    deep_supervision: DeepSupervisionSpec | None = None


class OptimizerSpec(_Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleSpec(_Strict):
    name: Literal["constant", "poly", "multistep", "plateau"] = "constant"
    power: float = 0.9  # poly
    milestones: list[int] = Field(default_factory=list)  # multistep (epochs)
    gamma: float = 0.1  # multistep
    factor: float = 0.2  # plateau
    patience: int = 6  # plateau
    early_stopping: int | None = None  # stop after this many epochs without validation improvement


class SamplerSpec(_Strict):
    """How training inputs are drawn from the cached cases."""

    name: _registered(SAMPLERS) = "patch"  # type: ignore[valid-type]
    foreground_fraction: float = Field(0.33, ge=0, le=1)  # nnU-Net's 1/3
    kidney_slice_oversampling: float = Field(1.0, ge=1)  # slices sampler: ResUNet paper x50
    hard_case: bool = False  # draw cases with high loss / many false positives more often
    # patch sampler: a foreground patch is centred on a class present in the case drawn with these relative
    # weights (target class name -> weight; classes left out weigh 1); None: every present class alike (nnU-Net)
    class_weights: dict[str, float] | None = None

    @model_validator(mode="after")
    def _weights_positive(self) -> SamplerSpec:
        bad = {k: v for k, v in (self.class_weights or {}).items() if not v > 0}
        if bad:
            raise ValueError(f"sampler class_weights must be > 0, got {bad}")
        return self


class AugmentSpec(_Strict):
    rotate_deg: float = Field(0.0, ge=0)
    flip_axes: list[int] = Field(default_factory=list)  # axes (0=z, 1=y, 2=x) flipped at random
    translate_mm: float = Field(0.0, ge=0)
    scale: tuple[float, float] | None = None
    gaussian_blur: float = Field(0.0, ge=0, le=1)  # probability
    histogram_equalization: float = Field(0.0, ge=0, le=1)  # probability
    intensity_scale: float = Field(0.0, ge=0)  # +- relative
    intensity_shift: float = Field(0.0, ge=0)  # +- in normalised units
    probability: float = Field(0.2, ge=0, le=1)  # per spatial transform
    # Spatial-prior degradation (mask:/prob:/masked_ct: inputs): training derives the prior from the
    # ground truth, inference gets an earlier stage's coarser, imperfect output. With probability
    # prior_degrade the prior is made like one: coarsened to blocks of prior_coarse_mm (random phase),
    # then dilated or eroded by up to prior_morph_mm.
    prior_degrade: float = Field(0.0, ge=0, le=1)
    prior_coarse_mm: float = Field(4.0, gt=0)
    prior_morph_mm: float = Field(0.0, ge=0)
    # With probability prior_extra (on top of the above, same draws) the prior also gets one or two false-positive
    # blobs of up to prior_extra_mm radius attached to it, as an earlier stage that leaks into a neighbouring organ.
    prior_extra: float = Field(0.0, ge=0, le=1)
    prior_extra_mm: float = Field(20.0, gt=0)
    # Thin field of view (ours, 3D networks): with probability thin_fov only a random run of slices
    # U(thin_fov_mm) mm long is kept and the rest of the patch becomes background (CT) and label 0: what
    # inference pads a CT thinner than the patch with (a slab, a partial scan).
    thin_fov: float = Field(0.0, ge=0, le=1)
    thin_fov_mm: tuple[float, float] = (60.0, 150.0)

    @model_validator(mode="after")
    def _thin_fov_range(self) -> AugmentSpec:
        lo, hi = self.thin_fov_mm
        if not 0 < lo <= hi:
            raise ValueError(f"thin_fov_mm must be (low, high) mm with 0 < low <= high, got {self.thin_fov_mm}")
        return self


class InferenceSpec(_Strict):
    mode: _registered(INFERENCE_MODES) = "sliding_window"  # type: ignore[valid-type]
    overlap: float = Field(0.5, ge=0, lt=1)
    gaussian: bool = True
    window: int | None = None  # z_windows / majority_vote: slices per window
    stride: int | None = None
    keep: tuple[int, int] | None = None  # z_windows: slice range kept from each window
    tta: bool = False  # mirroring test-time augmentation
    batch_size: int = 1


class PostStep(_Strict):
    op: _registered(STAGE_OPS)  # type: ignore[valid-type]
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _params_fit_the_op(self) -> PostStep:
        try:
            STAGE_OPS.check_params(self.op, self.params)
        except KitsegError as exc:
            raise ValueError(str(exc)) from None
        return self


class Stage(_Strict):
    name: str
    description: str = ""
    network: NetworkSpec
    inputs: list[StageInputText] = Field(default_factory=lambda: [StageInput("ct")])  # StageInput
    target: TargetSpec
    preprocess: PreprocessSpec
    # The earlier stage whose foreground defines this stage's ROI (``preprocess.roi``: margin,
    # per-kidney boxes, ...) at inference; in training the ground truth defines it.
    roi_from: str | None = None
    # Train this stage jointly with the earlier stage it names (kitseg.training.joint): that stage's
    # network feeds its probability to this one (the ``prob:<stage>`` input) and this stage's loss
    # over both stages' targets flows through both networks (TuNet eq. 1, trained end to end).
    train_with: str | None = None
    # Where training takes this stage's ROI and prior inputs from (issue 18 item 2): "ground_truth" (the
    # label; with augmentation.prior_degrade it is made to look like a stage output), or "predicted": the
    # earlier stage's own cross-validated predictions (nnU-Net's cascade), as prediction gets them. That
    # needs the earlier stage trained on every fold (kitseg train does it, then predicts each training
    # case with the fold model that did not see it: RUN_DIR/oof/<stage>/).
    prior_source: Literal["ground_truth", "predicted"] = "ground_truth"
    # Under a time budget (kitseg train --time-limit) each stage gets budget_weight / (the weights of the stages
    # still to train) of what is left; equal by default.
    budget_weight: float = Field(1.0, gt=0)
    patch_size: list[int] | None = Field(None, min_length=2, max_length=3)  # None: whole volume
    batch_size: int = Field(2, ge=1)
    epochs: int = Field(100, ge=1)
    iterations_per_epoch: int = Field(250, ge=1)
    loss: LossSpec = Field(default_factory=LossSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    augmentation: AugmentSpec = Field(default_factory=AugmentSpec)
    inference: InferenceSpec = Field(default_factory=InferenceSpec)
    postprocess: list[PostStep] = Field(default_factory=list)

    @model_validator(mode="after")
    def _inputs_known(self) -> Stage:
        unknown = sorted(set(self.sampler.class_weights or {}) - set(self.target.classes))
        if unknown:
            raise ValueError(f"stage {self.name!r}: sampler class_weights names {', '.join(unknown)}; the stage's "
                             f"classes are {', '.join(self.target.classes)}")
        if (self.roi_from is None) != (self.preprocess.roi is None):
            raise ValueError("a stage with preprocess.roi needs roi_from (the stage that locates the ROI), "
                             "and roi_from needs preprocess.roi")
        if self.prior_source == "predicted":
            sources = set(self.prior_stages) | ({self.roi_from} if self.roi_from else set())
            if len(sources) != 1:
                raise ValueError(f"stage {self.name!r}: prior_source predicted needs its ROI and prior inputs to come "
                                 f"from one earlier stage, not {sorted(sources) or 'none'}")
            if any(i.kind == "prob" for i in self.typed_inputs) or self.train_with:
                raise ValueError(f"stage {self.name!r}: prior_source predicted takes masks (mask:, masked_ct:, "
                                 "roi_from), not probabilities; a prob: input is trained jointly (train_with)")
        return self

    @property
    def prior_source_stage(self) -> str | None:
        """The earlier stage whose cross-validated predictions train this one (prior_source predicted)."""
        if self.prior_source != "predicted":
            return None
        return self.roi_from or self.prior_stages[0]

    @property
    def typed_inputs(self) -> list[StageInput]:
        """``inputs`` as `StageInput`s (also when a copy was made without validation)."""
        return [StageInput(i) for i in self.inputs]

    @property
    def prior_stages(self) -> list[str]:
        """The earlier stages whose output this stage takes as input (sorted)."""
        return sorted({i.stage for i in self.typed_inputs if i.stage is not None})

    @property
    def in_channels(self) -> int:
        return len(self.inputs)

    @property
    def network_params(self) -> dict[str, Any]:
        """The network's parameters; ``pool_counts``, when the recipe omits it and the network takes it,
        derived from the patch size (``kitseg.nets.plan.pool_plan``: pool an axis while it is >= 8
        voxels, as Zhang et al. 2.1 and nnU-Net choose them). A recipe that states them keeps them."""
        params = dict(self.network.params)
        if "pool_counts" in params or self.patch_size is None:
            return params
        from kitseg.nets import NETWORKS, accepted_params, pool_plan  # torch: only when a network is built

        info = NETWORKS.get(self.network.name)
        if info is not None and "pool_counts" in accepted_params(self.network.name) and \
                len(self.patch_size) == info.dims:
            params["pool_counts"] = list(pool_plan(self.patch_size))
        return params


class FinalSpec(_Strict):
    """How the stages' outputs become the final label map.

    ``argmax``: the labels of ``stage`` (softmax classes mapped back to dataset labels).
    ``merge``: kidney from ``kidney_stage``, tumor from ``tumor_stage`` (inside the kidney).
    ``tunet_algorithm1``: TuNet's thresholds and region growing on ``whole_stage``/``tumor_stage``
    sigmoid outputs, multiplied by ``mask_stage``.
    """

    op: _registered(FINAL_OPS) = "argmax"  # type: ignore[valid-type]
    stage: str | None = None
    kidney_stage: str | None = None
    tumor_stage: str | None = None
    whole_stage: str | None = None
    mask_stage: str | None = None
    # Steps on the final label map, on the CT's own grid (e.g. drop_small_tumors, which looks at the whole case).
    postprocess: list[PostStep] = Field(default_factory=list)

    @model_validator(mode="after")
    def _no_probability_ops(self) -> FinalSpec:
        for step in self.postprocess:
            if step.op in PROBABILITY_OPS:
                raise ValueError(f"op {step.op!r} needs a stage's probabilities: put it in that stage's postprocess, "
                                 "not in final.postprocess")
        return self


class Recipe(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str
    title: str
    paper: str  # the paper(s): authors, title, venue, year
    description: str = ""
    labels: Literal["kits19", "kits21", "kits23"] = "kits19"
    stages: list[Stage] = Field(min_length=1)
    final: FinalSpec = Field(default_factory=FinalSpec)
    ensemble: int = Field(1, ge=1)  # networks trained per stage and fold, own seeds (kitseg train --ensemble)
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)  # ablations: dotted overrides
    tiny: dict[str, Any] = Field(default_factory=dict)  # dotted overrides applied by --profile tiny (--tiny)
    cpu: dict[str, Any] = Field(default_factory=dict)  # dotted overrides applied by --profile cpu
    profile: str | None = None  # the profile this recipe was loaded with (recorded in the run folder)
    citations: dict[str, str] = Field(default_factory=dict)
    deviations: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references_resolve(self) -> Recipe:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for i, s in enumerate(self.stages):
            earlier = names[:i]
            refs = list(s.prior_stages)
            if s.roi_from:
                refs.append(s.roi_from)
            if s.train_with:
                refs.append(s.train_with)
                if StageInput.of("prob", s.train_with) not in s.inputs:
                    raise ValueError(f"stage {s.name!r} trains with {s.train_with!r} and needs the input "
                                     f"'prob:{s.train_with}'")
            for ref in refs:
                if ref not in earlier:
                    raise ValueError(f"stage {s.name!r} refers to {ref!r}, which is not an earlier stage")
        f = self.final
        for ref in (f.stage, f.kidney_stage, f.tumor_stage, f.whole_stage, f.mask_stage):
            if ref is not None and ref not in names:
                raise ValueError(f"final refers to unknown stage {ref!r}")
        return self

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)
