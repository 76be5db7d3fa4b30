"""Benchmark: the leaderboard. Every recipe trained at its ``cpu`` profile with the same CPU budget,
scored on the same held-out rendered phantoms, with each paper's headline ablation.

1. Render a synthetic CT for each of the first ``--cases`` (150) real KiTS19 label maps in
   ../shared/data/kits19 (``kitseg.synth.make_dataset(from_masks=..., downsample=K)``: in-plane
   size / K, slices kept, labels by majority vote); cached in bench/results/accuracy/ and reused.
2. Split by case number: the first 80 % (cases 0-119) train, the rest (120-149) test. Training uses
   ``kitseg.training.train_recipe.train_recipe`` with 10 splits of the training cases, fold 0 (108 cases
   train, 12 validate), the same splits for every entry. The validation cases are predicted and
   scored too: settings are chosen on them, never on the test cases.
3. Each entry (a recipe, or ``recipe:variant`` for an ablation) trains in its own process at
   ``--profile cpu`` (``load_recipe(..., profile="cpu")``: the recipe's ``cpu`` section, documented
   in docs/METHODS.md), ``--precision auto`` (bf16 on CPUs with AMX), under the same
   wall-clock budget (``--budget-min``, 30 by default; ``kitseg train --time-limit``, shared equally
   by a recipe's stages, each stopping after the epoch in which its share ran out). Each stage's
   epochs are planned from a measured step so that decaying schedules end about when the budget does.
4. Predict the test (and validation) cases with the best checkpoints, in the precision the networks trained in
   (``_accuracy_data.trained_precision``, whatever ``auto`` means on the machine), and evaluate them with
   ``kitseg.metrics.evaluate_folder``: KiTS19 kidney, tumor and composite Dice, Surface Dice at the
   KiTS23 tolerances, HD95, false-positive tumor components; wall time of each step.

Each entry's result is kept as a small JSON file, ``bench/results/leaderboard/<cpu kind>/<entry>.json``
(committed, with its date and machine), so a leaderboard that takes longer than one sitting is
assembled from runs made on different days: ``--report`` rebuilds the section of BENCHMARKS.md,
the box plots (bench/figures/accuracy_<cpu kind>.png) and the paired comparisons from those files.
The budget is wall-clock time, which buys different amounts of training on different CPUs, so there
is one board per kind of CPU (``_accuracy_data.cpu_kind``: the CPU model, ``-amx`` with AMX-BF16): a
run lands on its machine's board, and entries are ranked and paired only within a board. The
leaderboard's setting (renderer version and ``--downsample``: ``LEADERBOARD_RENDERER``,
``LEADERBOARD_DOWNSAMPLE`` in _accuracy_data.py) is recorded in each JSON; the report ranks the
entries run at it and lists the others apart until they are re-run. Each stage also records the
training time lost to stalled epochs (``stalled_s``): run nothing else on the machine while an
entry trains, not even niced inference, since torch's threads on oversubscribed cores stall and a
time-budgeted entry then trains on a fraction of its budget; the report marks such entries. The
report also marks an entry trained in another precision than its board's default: ``auto`` keeps
fp32 on a CPU with AVX512-BF16 but no AMX since 2026-12-07 (kitseg.precision), after the AMD EPYC
board's first entries had trained in bf16, so give further entries there ``--precision bf16``.

    .venv/bin/python bench/bench_accuracy.py                                  # every entry, 30 min each
    .venv/bin/python bench/bench_accuracy.py --entries kitseg_cascade nnunet_3d_fullres
    .venv/bin/python bench/bench_accuracy.py --entries kitseg_cascade --budget-min 10 --no-update --tag try
    .venv/bin/python bench/bench_accuracy.py --report                         # the table from the JSON files
    .venv/bin/python bench/bench_accuracy.py --quick                          # 10 cases, 1 minute: a check

These are synthetic CTs rendered from real masks, with CPU-sized networks trained for minutes: a
comparison of the methods under equal conditions, not a figure comparable with the papers' (REFERENCE.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import time
from pathlib import Path

import _accuracy_report as report
import _common
from _accuracy_data import (
    BOARD,
    LEADERBOARD_DOWNSAMPLE,
    LEADERBOARD_RENDERER,
    METRICS,
    WORK,
    entry_dir,
    entry_recipe,
    plan_epochs,
    predict_and_score,
    rendered,
    renderer_suffix,
    result_path,
    split_folder,
    stalled_seconds,
    tag_args,
    trained_precision,
    with_inference_of,
)
from _common import cpu_seconds, peak_rss_mb

NAME = "accuracy"
DEFAULT = "kitseg_cascade"
BASELINE = "nnunet_3d_fullres"
# The leaderboard: every recipe, then each paper's headline ablation (recipe:variant).
# Entries that differ from another only in post-processing, the final step or inference are scored with that entry's
# trained networks (--reuse), right after it: a paired comparison of the same networks.
ENTRIES = ["kitseg_cascade", "zhang2019_cascade", "tunet", "tunet:seb_median", "resunet_vnet25d", "fcn_ppm",
           "fcn_ppm:no_crf", "unet2d", "unet3d", "nnunet_3d_fullres", "zhang2019_cascade:ds_res", "tunet:median"]
REUSED = {"tunet:seb_median": "tunet", "fcn_ppm:no_crf": "fcn_ppm"}


def worker(args) -> dict:
    import torch

    from kitseg.precision import resolve_precision
    from kitseg.training.loop import TrainOptions
    from kitseg.training.train_recipe import labelled_dataset, prepare_run, train_recipe

    torch.set_num_threads(args.threads)
    entry, base = args.worker, Path(args.work)
    train_dir = base / "train"
    mdir = entry_dir(base, entry, args.tag)
    run_dir = mdir / "run"
    if mdir.exists():
        shutil.rmtree(mdir)
    budget = args.budget_min * 60.0
    precision = resolve_precision(args.precision, "cpu").name
    n_val = math.ceil(len(labelled_dataset(train_dir).cases) / args.n_splits)
    rss0, t_all = peak_rss_mb(), time.perf_counter()
    recipe = entry_recipe(entry)
    plan = plan_epochs(recipe, budget, n_val, precision)
    from kitseg.recipes import apply_overrides, validate_recipe

    planned = {f"stages.{s}.{k}": p[k] for s, p in plan.items() for k in ("epochs", "iterations_per_epoch") if k in p}
    data = apply_overrides(recipe.model_dump(mode="json"), planned)
    recipe = validate_recipe(data)
    options = TrainOptions(seed=args.seed, device="cpu", progress=False, time_limit_s=budget, precision=precision)
    t0 = time.perf_counter()
    prepare_run(recipe, labelled_dataset(train_dir), run_dir, options, args.n_splits, workers=args.threads)
    t_prep = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), cpu_seconds()
    results = train_recipe(recipe, train_dir, run_dir, folds=0, options=options, n_splits=args.n_splits)
    t_train, c_train = time.perf_counter() - t0, cpu_seconds() - c0
    rss_train = peak_rss_mb()  # ru_maxrss only grows: the peak of preprocessing and training, before any prediction
    stages = [{"stage": r.stage, "epochs_done": r.epochs_done, "epochs_planned": plan[r.stage]["epochs"],
               "finished": r.finished, "time_limited": r.time_limited, "seconds": r.seconds,
               "best_epoch": r.best_epoch, "best_ema_dice": r.best_ema_dice,
               "patches": r.epochs_done * recipe.stage(r.stage).iterations_per_epoch * recipe.stage(r.stage).batch_size,
               "model_s": sum(h["model_s"] for h in r.history), "data_s": sum(h["data_s"] for h in r.history),
               "val_s": sum(h["val_s"] for h in r.history),
               "stalled_s": stalled_seconds([h["model_s"] for h in r.history])} for r in results]
    return {**score_run(args, recipe, plan, stages, precision, t_prep, t_train, c_train, rss0, t_all),
            "train_peak_rss_mb": round(rss_train)}


def score_run(args, recipe, plan: dict, stages: list[dict], precision: str, t_prep: float | None, t_train: float,
              c_train: float | None, rss0: float, t_all: float) -> dict:
    """Predict and score the entry's trained run (validation and test cases); its result dict."""
    import torch

    from kitseg.inference import load_run

    entry, base = args.worker, Path(args.work)
    mdir = entry_dir(base, entry, args.tag)
    run_dir = mdir / "run"
    run = load_run(run_dir, device="cpu")
    val_ids = json.loads((run_dir / "splits.json").read_text(encoding="utf-8"))["folds"][0]["val"]
    val_dir = split_folder((base / "train").resolve(), mdir / "val_cases", sorted(val_ids))
    test = predict_and_score(run, base / "test", mdir / "test", precision)
    val = predict_and_score(run, val_dir, mdir / "val", precision)
    name, _, variant = entry.partition(":")
    return {"entry": entry, "recipe": name, "variant": variant or None, "profile": "cpu", "precision": precision,
            "cpu_profile": recipe_cpu_section(name, variant), "date": _common.now(), "machine": _common.machine(),
            "threads": torch.get_num_threads(), "command": args.command, "budget_min": args.budget_min,
            "downsample": args.downsample, "n_splits": args.n_splits, "seed": args.seed,
            "spacing": {s.name: s.preprocess.target_spacing for s in recipe.stages}, "plan": plan, "stages": stages,
            "preprocess_s": t_prep, "train_s": t_train, "train_cpu_s": c_train, "test": test, "val": val,
            "val_ids": sorted(val_ids), "total_s": time.perf_counter() - t_all, "rss_before_mb": round(rss0),
            "peak_rss_mb": round(peak_rss_mb()), "load_end": _common.load_1min()}


def trained_worker(args) -> dict:
    """``--score-trained``: predict and score an entry whose training finished but whose prediction did not (the
    process was stopped); the training figures are read back from the run folder (each stage's log.csv and last
    checkpoint), its preprocessing time and CPU time are unknown."""
    import torch

    from kitseg.recipes import validate_recipe
    from kitseg.stages.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    mdir = entry_dir(Path(args.work), args.worker, args.tag)
    run_dir = mdir / "run"
    if not (run_dir / "recipe.json").is_file():
        raise SystemExit(f"{run_dir}: no trained run to score; train the entry first")
    recipe = validate_recipe(json.loads((run_dir / "recipe.json").read_text(encoding="utf-8")))
    stages, plan = [], {}
    for stage in recipe.stages:
        logs = sorted((run_dir / stage.name / "fold_0").glob("**/log.csv"))
        if not logs:  # trained jointly with a later stage (TuNet's W-Net): that stage's log holds it
            continue
        rows = list(csv.DictReader(logs[0].open(encoding="utf-8")))
        ck = load_checkpoint(logs[0].parent / "checkpoint_last.pt", "cpu")
        if not rows:
            raise SystemExit(f"{logs[0]}: no epoch logged; train the entry first")
        sums = {k: sum(float(r[k]) for r in rows) for k in ("model_s", "data_s", "val_s")}
        precision = rows[-1]["precision"]
        done = int(rows[-1]["epoch"])
        plan[stage.name] = {"epochs": stage.epochs}
        stages.append({"stage": stage.name, "epochs_done": done, "epochs_planned": stage.epochs,
                       "finished": bool(ck["finished"]), "time_limited": not bool(ck["finished"]),
                       "seconds": sum(sums.values()), "best_epoch": int(ck["best_epoch"]),
                       "best_ema_dice": float(ck["best_ema_dice"]),
                       "patches": done * stage.iterations_per_epoch * stage.batch_size, **sums,
                       "stalled_s": stalled_seconds([float(r["model_s"]) for r in rows])})
    if not stages:
        raise SystemExit(f"{run_dir}: no stage's log.csv; train the entry first")
    for part in ("test", "val"):  # predict_folder resumes what a stopped prediction left: start afresh
        if (mdir / part).exists():
            shutil.rmtree(mdir / part)
    out = score_run(args, recipe, plan, stages, precision, None, sum(s["seconds"] for s in stages), None,
                    peak_rss_mb(), time.perf_counter())
    out["note"] = ("Trained by a run whose prediction was stopped; scored later with --score-trained. Training "
                   "figures read back from the run's log.csv files (seconds: the sum of each epoch's data, model "
                   "and validation time); preprocessing and CPU time not recorded.")
    return out


def rescore_worker(args) -> dict:
    """Predict and score an entry's trained run again (test and validation cases) with the entry's post-processing,
    final step and inference as its recipe has them now: the networks stay (refused if their training changed)."""
    import torch

    from kitseg.inference import load_run

    torch.set_num_threads(args.threads)
    mdir = entry_dir(Path(args.work), args.worker, args.tag)
    if not (mdir / "run" / "recipe.json").is_file():
        raise SystemExit(f"{mdir / 'run'}: no trained run to rescore; train the entry first")
    run = with_inference_of(load_run(mdir / "run", device="cpu"), entry_recipe(args.worker), args.worker)
    for part in ("test", "val"):  # predict_folder keeps outputs that exist (it resumes): start afresh
        if (mdir / part).exists():
            shutil.rmtree(mdir / part)
    precision = trained_precision(mdir / "run")
    return {"test": predict_and_score(run, Path(args.work) / "test", mdir / "test", precision),
            "val": predict_and_score(run, mdir / "val_cases", mdir / "val", precision)}


def rescore(args, work: Path, command: str) -> None:
    """``--rescore``: new test and validation scores for trained entries; training figures are kept."""
    for e in args.entries:
        path = result_path(e, args.tag)
        if not path.is_file():
            raise SystemExit(f"{path}: no result to rescore")
        old = json.loads(path.read_text(encoding="utf-8"))
        print(f"{e}: predicting and scoring the trained run again", flush=True)
        r = _common.spawn(__file__, ["--worker", e, "--rescore-worker", "--work", str(work),
                                     *tag_args("--tag", args.tag)], args.threads, e)
        before = {k: old[k]["mean"] for k in ("test", "val")}
        name, _, variant = e.partition(":")
        old.update(test=r["test"], val=r["val"], cpu_profile=recipe_cpu_section(name, variant))
        old.setdefault("rescored", []).append({"date": _common.now(), "machine": _common.machine(),
                                               "command": command, "commit": _common.git_commit(),
                                               "reason": args.reason, "before": before})
        write_result(path, old, e, r["test"],
                     f" (was composite {report.fmt(before['test']['kits19_composite'])})")
    if not args.no_update and not args.tag:
        update(args.force)


def score_trained(args, work: Path, command: str, extra: dict) -> None:
    """``--score-trained``: a result for each entry whose trained run has none yet (``extra``: the data's
    rendering and split, as a trained entry's JSON has them)."""
    for e in args.entries:
        path = result_path(e, args.tag)
        if path.is_file():
            raise SystemExit(f"{path}: {e} already has a result (use --rescore to score it again)")
        print(f"{e}: predicting and scoring its trained run", flush=True)
        r = _common.spawn(__file__, ["--worker", e, "--score-trained", "--work", str(work), "--command", command,
                                     "--budget-min", str(args.budget_min), "--n-splits", str(args.n_splits),
                                     "--seed", str(args.seed), "--downsample", str(args.downsample),
                                     *tag_args("--tag", args.tag)], args.threads, e)
        r.update(extra, start_load=_common.START_LOAD)
        val = report.fmt(r["val"]["mean"]["kits19_composite"])
        write_result(path, r, e, r["test"], f"; validation composite {val}")
    if not args.no_update and not args.tag:
        update(args.force)


def reuse_worker(args) -> dict:
    """Predict and score the test and validation cases with another entry's trained networks under this
    entry's recipe (which may differ from it in post-processing, final step and inference only)."""
    import torch

    from kitseg.inference import load_run

    torch.set_num_threads(args.threads)
    base = Path(args.work)
    src = entry_dir(base, args.reuse, args.source_tag)
    src_dir = src / "run"
    if not (src_dir / "recipe.json").is_file():
        raise SystemExit(f"{src_dir}: no trained run of {args.reuse}; train it first")
    run = with_inference_of(load_run(src_dir, device="cpu"), entry_recipe(args.worker), args.reuse)
    mdir = entry_dir(base, args.worker, args.tag)
    if mdir.exists():
        shutil.rmtree(mdir)
    val_dir = split_folder((base / "train").resolve(), mdir / "val_cases",
                           sorted(p.name for p in (src / "val_cases").iterdir()
                                  if p.name.startswith("case_")))
    precision = trained_precision(src_dir)
    return {"test": predict_and_score(run, base / "test", mdir / "test", precision),
            "val": predict_and_score(run, val_dir, mdir / "val", precision)}


def reuse(args, work: Path, command: str) -> None:
    """``--reuse ENTRY``: the entries scored with ENTRY's trained run; training figures are ENTRY's."""
    for e in args.entries:
        reuse_entry(e, args.reuse, work, command, args.threads, args.tag, source_tag=None)
    if not args.no_update and not args.tag:
        update(args.force)


def reuse_entry(entry: str, source: str, work: Path, command: str, threads: int, tag: str | None,
                source_tag: str | None) -> None:
    """Score ``entry`` with ``source``'s trained run (the last one trained in ``work``) and write its JSON, tagged
    ``tag``; the training figures are those of ``source``'s JSON (tagged ``source_tag``)."""
    src_path = result_path(source, source_tag)
    if not src_path.is_file():
        raise SystemExit(f"{src_path}: no result of {source} to reuse")
    src = json.loads(src_path.read_text(encoding="utf-8"))
    print(f"{entry}: predicting with {source}'s trained networks", flush=True)
    r = _common.spawn(__file__, ["--worker", entry, "--reuse", source, "--work", str(work), *tag_args("--tag", tag),
                                 *tag_args("--source-tag", source_tag)], threads, entry)
    name, _, variant = entry.partition(":")
    out = {**src, "entry": entry, "recipe": name, "variant": variant or None,
           "cpu_profile": recipe_cpu_section(name, variant), "test": r["test"], "val": r["val"],
           "reused_run": {"entry": source, "date": _common.now(), "machine": _common.machine(),
                          "command": command, "commit": _common.git_commit()}}
    out.pop("rescored", None)
    out.pop("note", None)  # a note on how the source was trained is the source's
    path = result_path(entry, tag)
    val = report.fmt(r["val"]["mean"]["kits19_composite"])
    write_result(path, out, entry, r["test"], f"; validation composite {val}")


def recipe_cpu_section(name: str, variant: str | None) -> dict:
    import yaml

    from kitseg.recipes import cpu_section, recipe_path

    return cpu_section(yaml.safe_load(recipe_path(name).read_text(encoding="utf-8")), variant)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", nargs="+", default=ENTRIES, metavar="RECIPE[:VARIANT]",
                    help="what to train and score (default: every recipe and the two paper ablations)")
    ap.add_argument("--budget-min", type=float, default=30.0, help="training wall-clock minutes per entry (30)")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="default auto")
    ap.add_argument("--downsample", type=int, default=LEADERBOARD_DOWNSAMPLE, help="in-plane downsampling of the "
                    f"rendered CTs (default {LEADERBOARD_DOWNSAMPLE}, the leaderboard's: "
                    f"{512 // LEADERBOARD_DOWNSAMPLE} x {512 // LEADERBOARD_DOWNSAMPLE} slices); another needs --tag")
    ap.add_argument("--cases", type=int, default=150, help="label maps to use, case_00000.. (default 150): the first "
                    "80 %% train, the rest test")
    ap.add_argument("--n-splits", type=int, default=10, help="splits of the training cases; fold 0 trains (default "
                    "10: 90 %% train, 10 %% validate)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the rendering, the splits and the training")
    ap.add_argument("--unenhanced", type=float, default=0.0, help="share of phantoms rendered without contrast "
                    "(kitseg synth --unenhanced; default 0: all late arterial, the leaderboard's data). Its own "
                    "rendering and work folder; needs --tag")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--tag", help="keep the results as bench/results/leaderboard/<cpu kind>/<entry>@<tag>.json "
                    "and the trained run and predictions in the work folder's <entry>@<tag>/ (a trial, left out of "
                    "the table; the entry's own run is not touched)")
    ap.add_argument("--no-update", action="store_true", help="do not rewrite BENCHMARKS.md or the figure")
    ap.add_argument("--quick", action="store_true", help="--cases 10 --downsample 8 --budget-min 1 "
                    "(a few minutes); implies --no-update and --tag quick")
    ap.add_argument("--report", action="store_true", help="only rebuild the section and the figures from "
                    "bench/results/leaderboard/*/*.json")
    ap.add_argument("--rescore", action="store_true", help="predict and score the entries' trained runs again "
                    "(after an inference fix, or with the recipe's new post-processing or inference settings) without "
                    "retraining (refused when the recipe now trains differently); the JSON keeps its training figures "
                    "and records the rescoring")
    ap.add_argument("--score-trained", action="store_true", help="predict and score entries whose training finished "
                    "but whose prediction was stopped (no JSON yet): the training figures are read back from the run "
                    "folder")
    _common.add_force_flag(ap)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--rescore-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--source-tag", help=argparse.SUPPRESS)
    ap.add_argument("--reason", help="with --rescore: why, in a few words (shown in BENCHMARKS.md)")
    ap.add_argument("--reuse", metavar="ENTRY", help="score the entries with ENTRY's trained run instead of "
                    "training them: for variants that change only post-processing, the final step or inference "
                    "(e.g. fcn_ppm:no_crf --reuse fcn_ppm), a paired comparison of the same networks; refused when "
                    "the training differs")
    ap.add_argument("--command", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _common.worker_exit(rescore_worker(args) if args.rescore_worker else trained_worker(args)
                            if args.score_trained else reuse_worker(args) if args.reuse else worker(args))
    if args.report:
        update(args.force)
        return
    if args.quick:
        args.cases, args.downsample, args.budget_min, args.no_update, args.tag = 10, 8, 1.0, True, "quick"
    if args.cases < 5:
        raise SystemExit("--cases must be at least 5 (80 % train, 20 % test)")
    from kitseg.errors import KitsegError

    for e in args.entries:
        try:
            entry_recipe(e)  # an unknown recipe, variant or a missing cpu profile stops here, before any work
        except KitsegError as err:
            raise SystemExit(f"bench_accuracy.py: {e}: {err}") from None
    if args.unenhanced and not args.tag:
        raise SystemExit("--unenhanced renders other test data than the leaderboard's: give --tag")
    from kitseg.synth import RENDERER_VERSION

    if RENDERER_VERSION != LEADERBOARD_RENDERER and not args.tag:
        raise SystemExit(f"this kitseg's renderer (version {RENDERER_VERSION}) draws other phantoms than the "
                         f"leaderboard's (version {LEADERBOARD_RENDERER}): give --tag, or re-run every entry and "
                         "raise LEADERBOARD_RENDERER in bench/_accuracy_data.py")
    if args.downsample != LEADERBOARD_DOWNSAMPLE and not args.tag:
        raise SystemExit(f"--downsample {args.downsample} renders other test data than the leaderboard's "
                         f"(--downsample {LEADERBOARD_DOWNSAMPLE}): give --tag")
    data, render = rendered(args.cases, args.downsample, args.seed, args.unenhanced)
    ids = [f"case_{i:05d}" for i in range(args.cases)]
    n_train = int(round(0.8 * args.cases))
    work = WORK / (f"ds{args.downsample}_n{args.cases}_s{args.seed}" + (f"_u{args.unenhanced:g}" if args.unenhanced
                                                                           else "") + renderer_suffix())
    split_folder(data, work / "train", ids[:n_train])
    split_folder(data, work / "test", ids[n_train:])
    command = _common.command("bench_accuracy.py")
    if args.rescore:
        rescore(args, work, command)
        return
    if args.reuse:
        reuse(args, work, command)
        return
    if args.score_trained:
        score_trained(args, work, command, {"render": render, "train_ids": ids[:n_train], "test_ids": ids[n_train:]})
        return
    for e in args.entries:
        if e in REUSED:
            reuse_entry(e, REUSED[e], work, command, args.threads, args.tag, source_tag=args.tag)
            continue
        print(f"{e}: training at the cpu profile for {args.budget_min:g} min, then predicting", flush=True)
        r = _common.spawn(__file__, ["--worker", e, "--work", str(work), "--budget-min", str(args.budget_min),
                                     "--n-splits", str(args.n_splits), "--seed", str(args.seed), "--precision",
                                     args.precision, "--command", command, "--downsample", str(args.downsample),
                                     *tag_args("--tag", args.tag)],
                          args.threads, e)
        r.update(render=render, train_ids=ids[:n_train], test_ids=ids[n_train:], start_load=_common.START_LOAD)
        path = result_path(e, args.tag)
        val = report.fmt(r["val"]["mean"]["kits19_composite"])
        write_result(path, r, e, r["test"], f"; validation composite {val}; trained {r['train_s']:.0f} s")
    if not args.no_update and not args.tag:
        update(args.force)


def write_result(path: Path, result: dict, entry: str, test: dict, tail: str = "") -> None:
    """Write an entry's JSON atomically and print its test means (and ``tail``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print(f"{entry}: test " + ", ".join(f"{METRICS[k]} {report.fmt(v)}" for k, v in test["mean"].items())
          + f"{tail}; wrote {path}", flush=True)


def update(force: bool = False) -> None:
    at = (LEADERBOARD_RENDERER, LEADERBOARD_DOWNSAMPLE)
    by_kind = report.boards(BOARD, at) if BOARD.is_dir() else {}
    if not any(now for now, _ in by_kind.values()):
        raise SystemExit(f"no results in {BOARD} at the leaderboard's setting (renderer version {at[0]}, "
                         f"--downsample {at[1]}) yet: run the benchmark first")
    figures = {kind: report.plot(now, figure_path(kind)) for kind, (now, _) in by_kind.items() if now}
    load = max((r.get("start_load") or 0.0) for now, _ in by_kind.values() for r in now.values())
    _common.update_markdown(NAME, report.markdown(by_kind, figures), report.headlines(by_kind), force=force,
                            load_start=load)  # the guard judges the measurements


def figure_path(kind: str) -> Path:
    """The box plot of one CPU kind's board."""
    return _common.FIGURES / f"accuracy_{kind}.png"


if __name__ == "__main__":
    main()
