"""Benchmark: a model trained only on rendered phantoms, applied to real CT (sim-to-real).

The runs are leaderboard runs of bench_accuracy.py (default: the default recipe's, in
bench/results/accuracy/ds4_n150_s0/kitseg_cascade/run, and, when trained, the same recipe trained on
other phantoms, ``TWINS``: half unenhanced, ``bench_accuracy.py --entries kitseg_cascade --unenhanced 0.5
--tag unenh50``, and the same by renderer version 3, ``--tag r3unenh50``). The real CTs are
../shared/data/real_ct/example_ct.nii.gz (112 slices at 3 mm) and example_ct_sm.nii.gz (its 30-slice
slab), with example_ct_sm_kidneys.nii.gz (machine-made kidney labels of the slab). Reported:

- kidney Dice (kidney + tumor labels vs the kidney mask) on the slab; goal at least 0.80;
- on both CTs, the predicted tumor voxels that lie outside the predicted kidneys (kidney + tumor
  components holding no kidney voxel, i.e. what ``tumor_in_kidney`` would remove), and the
  predicted tumor volume (the real CTs' kidneys are not known to hold tumors).

    .venv/bin/python bench/bench_sim2real.py [--run RUN_DIR ...] [--no-update]

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
# The same recipe trained on other phantoms, each included once scored (its leaderboard JSON exists):
# (work folder, entry folder = result name). Half unenhanced (bench_accuracy.py --unenhanced 0.5 --tag unenh50);
# half unenhanced by renderer version 3, whose layout behind the kidneys was measured on the real slab
# (--unenhanced 0.5 --tag r3unenh50).
# The variant thin_fov (the localizer also trained on thin fields of view, docs/TRAINING.md) on the same phantoms:
# the cpu profile since. Each with the recipe it was trained with, as the table names it.
TWINS = (("ds4_n150_s0_u0.5", "kitseg_cascade@unenh50", "kitseg_cascade of 2026-12-07 01:46 (3D stage 2, no thin FOV)"),
         ("ds4_n150_s0_u0.5_r3", "kitseg_cascade@r3unenh50", "kitseg_cascade:no_thin_fov"),
         ("ds4_n150_s0_u0.5_r3", "kitseg_cascade__thin_fov@r3unenh50", "kitseg_cascade (cpu profile, with thin FOV)"))
DEFAULT_LABEL = "kitseg_cascade:no_thin_fov (the leaderboard's run until 2026-12-07)"


def training_phantoms(run_dir: Path) -> str:
    """What a leaderboard run was trained on: the renderer version its training_data.json records, and the
    unenhanced share its work folder's name gives (``..._u0.5``: half unenhanced)."""
    from kitseg.training_data import from_run

    version = from_run(run_dir).renderer_version
    work = Path(run_dir).resolve().parent.parent.name.split("_r")[0]
    share = work.rpartition("_u")[2] if "_u" in work else ""
    what = f"{float(share):.0%} unenhanced" if share else "all late arterial"
    return f"phantoms v{version or '?'}, {what}"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def outside_tumor(labels: np.ndarray) -> int:
    """Tumor voxels in kidney + tumor components that hold no kidney voxel."""
    from kitseg.postprocessing import tumor_inside_kidney

    return int(((labels == 2) & (tumor_inside_kidney(labels) != 2)).sum())


def measure(run_dir: Path, label: str | None = None) -> dict:
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
    entry = label or Path(run_dir).resolve().parent.name.split("@")[0].replace("__", ":")  # e.g. recipe:variant
    for r in rows:
        r["model"] = training_phantoms(run_dir)
        r["entry"] = entry
    return {"run": str(run_dir), "recipe": run.recipe.name, "profile": run.recipe.profile, "rows": rows}


def markdown(res: dict) -> str:
    out = _common.header(TITLE, res["date"], res["machine"], res["command"], 2, res.get("load_end"))
    out += [f"Models: `{res['recipe']}` ({res['profile'] or 'paper'} profile) trained by bench/bench_accuracy.py on "
            "rendered phantoms only (30 min, the leaderboard's 120 training masks): on late-arterial phantoms "
            "(the leaderboard's until 2026-12-07: renderer version 1 at 1/4 resolution, v1), on phantoms of which "
            "half are rendered without contrast "
            "(`--unenhanced 0.5 --tag unenh50`; v2, calibrated to the slab's HU, docs/SYNTH.md; trained on "
            "2026-12-07 with the default of that day, whose stage 2 was 3D), and on half-unenhanced phantoms of "
            "renderer version 3 (v3: paraspinal muscles, spine and kidney depth measured on the real slab, "
            "docs/SYNTH.md; `--unenhanced 0.5 --tag r3unenh50`); no real CT was seen in training. The real slab is "
            "unenhanced (kidney 14 HU, docs/SYNTH.md). Truth: example_ct_sm_kidneys.nii.gz (machine-made kidney "
            "labels of the slab).", "",
            "| recipe | trained on | CT | shape (z, y, x) | kidney Dice | predicted kidney ml (truth) | "
            "predicted tumor ml | tumor voxels outside the kidneys | seconds |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        kd = f"{r['kidney_dice']:.3f}" if "kidney_dice" in r else "-"
        truth = f" ({r['truth_kidney_ml']:.0f})" if "truth_kidney_ml" in r else ""
        out.append(f"| {r.get('entry', res['recipe'])} | {r.get('model', '-')} | {r['ct']} | "
                   f"{'x'.join(map(str, r['shape']))} | {kd} | "
                   f"{r['kidney_ml']:.0f}{truth} | "
                   f"{r['tumor_ml']:.1f} | {r['tumor_outside_kidney_voxels']} | {r['seconds']:.1f} |")
    slab = [r for r in res["rows"] if "kidney_dice" in r]
    out += ["", "Reading: kidney Dice on the real slab (goal: at least 0.80) "
            + "; ".join(f"{r['kidney_dice']:.3f} ({r.get('entry', res['recipe'])} trained on {r['model']})"
                        for r in slab) + "; "
            + ("no predicted tumor lies outside the predicted kidneys on either CT."
               if all(r["tumor_outside_kidney_voxels"] == 0 for r in res["rows"])
               else "some predicted tumor lies outside the predicted kidneys (see the table).")]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, nargs="+", help="run folders (default: the leaderboard's kitseg_cascade run "
                    "and, when trained and scored, its twins trained on other phantoms, TWINS)")
    ap.add_argument("--no-update", action="store_true", help="do not rewrite BENCHMARKS.md")
    _common.add_force_flag(ap)
    args = ap.parse_args()
    _common.require(REAL / "example_ct_sm_kidneys.nii.gz", "the real CTs in ../shared/data/real_ct")
    twins = [(_common.RESULTS / "accuracy" / work / entry / "run", label) for work, entry, label in TWINS
             if (_common.RESULTS / "leaderboard" / f"{entry}.json").is_file()]  # written when the run is scored
    runs = [(run, None) for run in args.run] if args.run else [(DEFAULT_RUN, DEFAULT_LABEL), *twins]
    for run, _ in runs:
        if not (run / "recipe.json").is_file():
            raise SystemExit(f"{run}: no trained run there (run bench/bench_accuracy.py --entries kitseg_cascade)")
    measured = [measure(run, label) for run, label in runs]
    res = {"date": _common.now(), "machine": _common.machine(), "command": _common.command("bench_sim2real.py"),
           **measured[0], "runs": [m["run"] for m in measured], "rows": [r for m in measured for r in m["rows"]],
           "load_end": _common.load_1min()}
    _common.write_json(NAME, res)
    text = markdown(res)
    print(text)
    if not args.no_update:
        best = max((r for r in res["rows"] if "kidney_dice" in r), key=lambda r: r["kidney_dice"])
        _common.update_markdown(NAME, text, [("sim-to-real: phantom-trained default model, kidney Dice on the real "
                                              "slab example_ct_sm", f"{best['kidney_dice']:.3f}: {best['entry']} "
                                              f"trained on {best['model']}, {best['kidney_ml']:.0f} ml predicted for "
                                              f"{best['truth_kidney_ml']:.0f} ml (goal 0.80)")], force=args.force)


if __name__ == "__main__":
    main()
