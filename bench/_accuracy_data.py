"""The leaderboard's data and bookkeeping (bench_accuracy.py): where each entry's run, predictions and JSON live,
the rendered phantoms and their train/test folders, the epoch plan under a time budget, and predicting + scoring
a folder of cases."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import _common
from _common import RESULTS, cpu_seconds

WORK = RESULTS / "accuracy"
BOARD = RESULTS / "leaderboard"
# The leaderboard's setting: the renderer version (kitseg.synth.RENDERER_VERSION) that draws its phantoms
# and their in-plane downsampling. Each entry's JSON records the setting it was run at; the report ranks
# only the entries run at this one and lists the others apart until they are re-run (an untagged run at
# another setting is refused). Was renderer version 1 at 1/4 resolution until 2026-12-07: 1/4 erased
# the small tumors (test tumor Dice 0 below 8 ml) and version 1's back lacked the paraspinal muscles.
LEADERBOARD_RENDERER = 3
LEADERBOARD_DOWNSAMPLE = 2
METRICS = {  # column of evaluate_folder's rows -> table heading
    "kits19_kidney_dice": "kidney Dice", "kits19_tumor_dice": "tumor Dice", "kits19_composite": "composite",
    "kidney_surface_dice": "kidney SD", "tumor_surface_dice": "tumor SD", "kidney_hd95_mm": "kidney HD95 mm",
    "tumor_hd95_mm": "tumor HD95 mm", "tumor_detection_false_positive_tumors": "FP tumors",
}


def stalled_seconds(epoch_model_s: list[float], factor: float = 2.0) -> float:
    """Seconds a stage's training lost to stalls: over the epochs whose model time exceeds ``factor`` times the
    stage's median epoch, their excess over the median. Every epoch of a stage does the same work, so such
    epochs mean the CPUs were shared (torch's threads on an oversubscribed machine slow down by 10x or more,
    not in proportion to the other work's share), and the entry trained on less than its budget. A stage whose
    every epoch stalled (or one of under 3 epochs) shows nothing here."""
    import statistics

    if len(epoch_model_s) < 3:
        return 0.0
    med = statistics.median(epoch_model_s)
    return float(sum(x - med for x in epoch_model_s if x > factor * med))


def entry_recipe(entry: str):
    from kitseg.recipes import load_recipe

    name, _, variant = entry.partition(":")
    return load_recipe(name, variant=variant or None, profile="cpu")


def file_name(entry: str) -> str:
    return entry.replace(":", "__")


def tagged(entry: str, tag: str | None) -> str:
    """The name of an entry's files: a trial (``--tag``) has its own, so it never replaces the entry's."""
    return file_name(entry) + (f"@{tag}" if tag else "")


def entry_dir(work: Path, entry: str, tag: str | None) -> Path:
    """An entry's folder of runs and predictions in ``work``."""
    return Path(work) / tagged(entry, tag)


def cpu_kind(machine: dict) -> str:
    """The board a run belongs to, as a folder name: its CPU model, with ``-amx`` where it has AMX-BF16.

    The budget is wall-clock time, and one CPU buys more training in it than another (a training step of the
    same network takes 1.4-2.1x longer on the AMD EPYC without AMX than on the Xeon with it: bench_throughput),
    so only entries trained on one kind of CPU are ranked and paired with each other."""
    name = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b|@.*", " ", machine["cpu"].lower())
    slug = "-".join(re.findall(r"[a-z0-9]+", name)) or "cpu"
    return slug + ("-amx" if "amx_bf16" in machine.get("cpu_flags", []) else "")


def result_path(entry: str, tag: str | None) -> Path:
    """An entry's result JSON on this machine's board, bench/results/leaderboard/<cpu kind>/."""
    return BOARD / cpu_kind(_common.machine()) / (tagged(entry, tag) + ".json")


def tag_args(flag: str, tag: str | None) -> list[str]:
    return [flag, tag] if tag else []


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def renderer_suffix() -> str:
    """``"_r<version>"`` for renderer versions after 1 (whose folders predate the suffix): each renderer
    version's phantoms get their own rendered and work folders, so that a cache never mixes two renderers'."""
    from kitseg.synth import RENDERER_VERSION

    return f"_r{RENDERER_VERSION}" if RENDERER_VERSION != 1 else ""


def rendered(cases: int, downsample: int, seed: int, unenhanced: float = 0.0) -> tuple[Path, dict]:
    """The rendered dataset (cached): a folder holding case_00000.. with imaging + segmentation."""
    from kitseg.synth import RENDERER_VERSION, make_dataset

    _common.require(_common.SHARED_KITS19)
    out = WORK / (f"rendered_ds{downsample}_seed{seed}" + (f"_u{unenhanced:g}" if unenhanced else "")
                  + renderer_suffix())
    meta_path = out / "bench_render.json"
    ids = [f"case_{i:05d}" for i in range(cases)]
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if all((out / c / "imaging.nii.gz").exists() for c in ids) and meta.get("cases", 0) >= cases:
            return out, {**meta, "reused": True}
    sources = sorted(p.parent.name for p in _common.SHARED_KITS19.glob("case_*/segmentation.nii.gz"))
    if len(sources) < cases or sources[:cases] != ids:
        raise SystemExit(f"{_common.SHARED_KITS19} holds {len(sources)} label maps; --cases {cases} needs "
                         f"case_00000..case_{cases - 1:05d}")
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    make_dataset(out, cases=cases, seed=seed, from_masks=_common.SHARED_KITS19, downsample=downsample,
                 progress=False, workers=2, unenhanced=unenhanced)
    meta = {"cases": cases, "downsample": downsample, "seed": seed, "unenhanced": unenhanced,
            "renderer_version": RENDERER_VERSION, "seconds": time.perf_counter() - t0}
    meta_path.write_text(json.dumps(meta) + "\n", encoding="utf-8")
    return out, {**meta, "reused": False}


def split_folder(src: Path, dst: Path, ids: list[str]) -> Path:
    """A KiTS-layout folder of symbolic links to some of ``src``'s cases."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shutil.copyfile(src / "dataset.json", dst / "dataset.json")
    if (src / "synth.json").is_file():  # so that a run trained on the split records synthetic training data
        shutil.copyfile(src / "synth.json", dst / "synth.json")
    for c in ids:
        os.symlink((src / c).resolve(), dst / c, target_is_directory=True)
    return dst


# ---------------------------------------------------------------------------------------------
# One entry (in a fresh process)
# ---------------------------------------------------------------------------------------------
def plan_epochs(recipe, budget_s: float, n_val: int, precision: str) -> dict:
    """Epochs (or, for a multistep schedule, iterations per epoch) per stage for the time budget.

    The budget ends every stage (``--time-limit``; its share follows the stages' ``budget_weight``), and
    a poly schedule follows the clock (``kitseg.training.optim.poly_by_progress``), so epochs are only a
    cap (1000). A multistep schedule's milestones are epochs: there the epochs stay and the iterations
    per epoch are fitted to the stage's share from a measured training step (2 warm-up + 3 timed)."""
    from bench_throughput import time_train_steps

    out = {}
    total = sum(s.budget_weight for s in recipe.stages)
    for stage in recipe.stages:
        if stage.schedule.name != "multistep":
            out[stage.name] = {"epochs": 1000}
            continue
        share = budget_s * stage.budget_weight / total
        step = time_train_steps(stage, stage.batch_size, 2, 3, mode=precision)["median_step_s"]
        val = 2 * n_val * step / stage.batch_size / 3  # about 2 patches per validation entry, a forward pass each
        its = max(1, math.floor((share / stage.epochs - val) / (step * 1.1)))
        out[stage.name] = {"step_s": step, "epochs": stage.epochs, "iterations_per_epoch": its}
    return out


def trained_precision(run_dir: Path) -> str:
    """The precision a run's networks trained in (the last epoch logged by its first stage's log.csv)."""
    logs = sorted(Path(run_dir).glob("*/fold_0/**/log.csv"))
    rows = list(csv.DictReader(logs[0].open(encoding="utf-8"))) if logs else []
    if not rows:
        raise SystemExit(f"{run_dir}: no epoch logged; train the entry first")
    return rows[-1]["precision"]


def predict_and_score(run, cases_dir: Path, out: Path, precision: str) -> dict:
    """Predict ``cases_dir`` with ``run`` in ``precision`` (the one its networks trained in: every entry is scored
    as it was trained, whatever ``--precision auto`` means on the machine) and evaluate the predictions."""
    from kitseg.inference.folder import predict_folder
    from kitseg.metrics import evaluate_folder

    t0, c0 = time.perf_counter(), cpu_seconds()
    folder = predict_folder(cases_dir, out / "predictions", run, device="cpu", progress=False, precision=precision)
    t_pred, c_pred = time.perf_counter() - t0, cpu_seconds() - c0
    failed = [c.case_id for c in folder.cases if c.status == "failed"]
    if failed:
        raise SystemExit(f"prediction failed for {failed}")
    t0 = time.perf_counter()
    summary = evaluate_folder(out / "predictions", cases_dir, out / "evaluation")
    rows = [{k: v for k, v in r.flat().items() if k in METRICS or k == "case_id"} for r in summary.cases]
    return {"precision": precision, "predict_s": t_pred, "predict_cpu_s": c_pred,
            "predict_case_s": [c.seconds for c in folder.cases], "evaluate_s": time.perf_counter() - t0, "rows": rows,
            "mean": {k: summary.mean.get(k) for k in METRICS}, "median": {k: summary.median.get(k) for k in METRICS}}


INFERENCE_SIDE = ("postprocess", "inference")  # stage fields that do not change what a network learns


def training_part(recipe) -> dict:
    """A recipe without what only prediction reads (``final``, each stage's post-processing and inference)."""
    data = recipe.model_dump(mode="json")
    for key in ("final", "citations", "deviations", "variants", "tiny", "cpu", "description", "title", "name",
                "profile"):
        data.pop(key, None)
    for stage in data["stages"]:
        for key in (*INFERENCE_SIDE, "description"):
            stage.pop(key, None)
    return data


def with_inference_of(run, recipe, trained_as: str):
    """``run`` predicting with ``recipe``'s post-processing, final step and inference (the entry's recipe as it is
    now); refused when ``recipe`` would train the networks differently from how ``run``'s were trained."""
    import dataclasses

    trained, mine = training_part(run.recipe), training_part(recipe)
    for a, b in zip(trained["stages"], mine["stages"]):  # the run's epochs were planned for the budget (a cap)
        b["epochs"], b["iterations_per_epoch"] = a["epochs"], a["iterations_per_epoch"]
    if trained != mine:
        raise SystemExit(f"{recipe.name} now trains differently from the networks of {trained_as}: retrain it")
    return dataclasses.replace(run, recipe=recipe.model_copy(update={"stages": [
        s.model_copy(update={"epochs": t.epochs, "iterations_per_epoch": t.iterations_per_epoch})
        for s, t in zip(recipe.stages, run.recipe.stages)]}))
