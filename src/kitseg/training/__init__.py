"""Training: one short loop for every recipe and every stage of a cascade.

Modules (import from them directly; this package imports nothing itself, so that inference can
use ``targets``, ``inputs`` and ``checkpoint`` cheaply):

- ``targets``: dataset labels <-> a stage's classes (``make_target``, ``classes_to_labels``);
- ``inputs``: a stage's input channels (CT, earlier stages' masks/probabilities, masked CT);
- ``sampling``: patch / slice-window / whole-volume sampler, foreground oversampling, hard cases;
- ``augment``: seeded augmentation parameters and their deterministic application;
- ``data``: batches in the main process or in DataLoader workers;
- ``optim``: optimizers, schedules, early stopping;
- ``checkpoint``: atomic checkpoints, ``load_stage_models`` for inference;
- ``splits``: deterministic k-fold splits (``splits.json``);
- ``distributed``: torchrun / DistributedDataParallel helpers;
- ``logs``: log.csv, TensorBoard, curves.png;
- ``loop``: ``train_stage`` (one stage, one fold); ``run``: ``train_recipe`` (the whole run folder).
"""
