"""Benchmark: a model trained only on rendered phantoms, applied to real CT (sim-to-real).

The run is a leaderboard run of bench_accuracy.py (default: the default recipe's, in
bench/results/accuracy/ds4_n150_s0/kitseg_cascade/run). The real CTs are
../shared/data/real_ct/example_ct.nii.gz (112 slices at 3 mm) and example_ct_sm.nii.gz (its 30-slice
slab), with example_ct_sm_kidneys.nii.gz (machine-made kidney labels of the slab). Reported:

- kidney Dice (kidney + tumor labels vs the kidney mask) on the slab; goal at least 0.80;
- on both CTs, the predicted tumor voxels that lie outside the predicted kidneys (kidney + tumor
  components holding no kidney voxel, i.e. what ``tumor_in_kidney`` would remove), and the
  predicted tumor volume (the real CTs' kidneys are not known to hold tumors).

    .venv/bin/python bench/bench_sim2real.py [--run RUN_DIR] [--no-update]

Results: a table on stdout, JSON in bench/results/sim2real.json, and the section between
``<!-- sim2real:start -->`` and ``<!-- sim2real:end -->`` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import _common

NAME = "sim2real"
TITLE = "Sim-to-real: the phantom-trained default model on real CT"
REAL = _common.ROOT.parent / "shared" / "data" / "real_ct"
DEFAULT_RUN = _common.RESULTS / "accuracy" / "ds4_n150_s0" / "kitseg_cascade" / "run"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def outside_tumor(labels: np.ndarray) -> int:
    """Tumor voxels in kidney + tumor components that hold no kidney voxel."""
    from kitseg.postprocessing import tumor_inside_kidney

    return int(((labels == 2) & (tumor_inside_kidney(labels) != 2)).sum())


def measure(run_dir: Path) -> dict:
    import torch

    from kitseg.inference import load_run, predict
    from kitseg.io import read_volume

    torch.set_num_threads(2)
    run = load_run(run_dir)
    rows = []
    for name, truth in (("example_ct_sm.nii.gz", "example_ct_sm_kidneys.nii.gz"), ("example_ct.nii.gz", None)):
        ct = read_volume(REAL / name)
        t0 = time.perf_counter()
        pred = predict(ct, run).array
        row = {"ct": name, "shape": list(ct.shape), "spacing": [round(s, 2) for s in ct.spacing],
               "seconds": time.perf_counter() - t0, "kidney_ml": float((pred > 0).sum() * ct.voxel_volume_ml),
               "tumor_ml": float((pred == 2).sum() * ct.voxel_volume_ml),
               "tumor_outside_kidney_voxels": outside_tumor(pred)}
        if truth:
            gt = read_volume(REAL / truth).array > 0
            row.update(kidney_dice=dice(pred > 0, gt), truth_kidney_ml=float(gt.sum() * ct.voxel_volume_ml))
        rows.append(row)
    return {"run": str(run_dir), "recipe": run.recipe.name, "profile": run.recipe.profile, "rows": rows}


def markdown(res: dict) -> str:
    out = _common.header(TITLE, res["date"], res["machine"], res["command"], 2, res.get("load_end"))
    out += [f"Model: `{res['recipe']}` ({res['profile'] or 'paper'} profile) trained for the leaderboard on rendered "
            "phantoms only (BENCHMARKS.md, accuracy); no real CT was seen in training. Truth: "
            "example_ct_sm_kidneys.nii.gz (machine-made kidney labels of the slab).", "",
            "| CT | shape (z, y, x) | kidney Dice | predicted kidney ml (truth) | predicted tumor ml | "
            "tumor voxels outside the kidneys | seconds |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        kd = f"{r['kidney_dice']:.3f}" if "kidney_dice" in r else "-"
        truth = f" ({r['truth_kidney_ml']:.0f})" if "truth_kidney_ml" in r else ""
        out.append(f"| {r['ct']} | {'x'.join(map(str, r['shape']))} | {kd} | {r['kidney_ml']:.0f}{truth} | "
                   f"{r['tumor_ml']:.1f} | {r['tumor_outside_kidney_voxels']} | {r['seconds']:.1f} |")
    sm = res["rows"][0]
    out += ["", f"Reading: kidney Dice {sm['kidney_dice']:.3f} on the real slab (goal: at least 0.80); "
            + ("no predicted tumor lies outside the predicted kidneys on either CT."
               if all(r["tumor_outside_kidney_voxels"] == 0 for r in res["rows"])
               else "some predicted tumor lies outside the predicted kidneys (see the table).")]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=DEFAULT_RUN, help="the run folder (default: the leaderboard's "
                    "kitseg_cascade run)")
    ap.add_argument("--no-update", action="store_true", help="do not rewrite BENCHMARKS.md")
    _common.add_force_flag(ap)
    args = ap.parse_args()
    _common.require(REAL / "example_ct_sm_kidneys.nii.gz", "the real CTs in ../shared/data/real_ct")
    if not (args.run / "recipe.json").is_file():
        raise SystemExit(f"{args.run}: no trained run there (run bench/bench_accuracy.py --entries kitseg_cascade)")
    res = {"date": _common.now(), "machine": _common.machine(), "command": _common.command("bench_sim2real.py"),
           **measure(args.run), "load_end": _common.load_1min()}
    _common.write_json(NAME, res)
    text = markdown(res)
    print(text)
    if not args.no_update:
        sm = res["rows"][0]
        _common.update_markdown(NAME, text, [("sim-to-real: phantom-trained default model, kidney Dice on the real "
                                              "slab example_ct_sm", f"{sm['kidney_dice']:.3f} (goal 0.80)")],
                                force=args.force)


if __name__ == "__main__":
    main()
