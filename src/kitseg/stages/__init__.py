"""The stage contract that training and inference both use (and that imports neither of them).

- ``inputs``: a stage's input channels (`StageInput`s: the CT, earlier stages' masks/probabilities);
- ``targets``: dataset labels <-> a stage's classes;
- ``grid``: the one grid module: crop/resample inverses, to and from an entry's grid, back to the CT;
- ``ops``: the per-stage post-processing ops and the final ops (``kitseg.registry``);
- ``outputs``: what a stage puts out at inference (`EntryOutput`, `StageOutput`);
- ``checkpoint``, ``run_folder``, ``model_file``, ``loaded_run``: the run-folder contract
  (checkpoint format, loading a trained run folder or ``kitseg export`` file into a `LoadedRun`).

Import from the modules directly; this package imports nothing itself. See docs/ARCHITECTURE.md.
"""
