"""Benchmark: do bf16 and fp32 predictions of one trained model agree?

The model is the default recipe's leaderboard run (bench_accuracy.py, cpu profile, trained on rendered
phantoms; default bench/results/accuracy/ds4_n150_s0/kitseg_cascade/run). Each held-out test phantom
(cases 120-149 of the rendered KiTS19 masks) is predicted twice by the same checkpoints, in fp32 and
under bf16 autocast (``kitseg.precision``), interleaved; reported per case: the Dice between the two
label maps for kidney (kidney + tumor) and tumor, and the seconds of each. Goals (issue: precision):
kidney agreement >= 0.99 and tumor agreement >= 0.97.

    .venv/bin/python bench/bench_precision.py [--run RUN_DIR] [--cases N] [--no-update]

Results: a table on stdout, JSON in bench/results/precision.json, and the section between
``<!-- precision:start -->`` and ``<!-- precision:end -->`` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import _common

NAME = "precision"
TITLE = "Precision: bf16 and fp32 predictions of one trained model"
WORK = _common.RESULTS / "accuracy" / "ds4_n150_s0"


def measure(run_dir: Path, test_dir: Path, n: int) -> list[dict]:
    import numpy as np
    import torch

    from kitseg.inference import load_run, predict
    from kitseg.io import read_volume

    torch.set_num_threads(2)
    run = load_run(run_dir)
    rows = []
    for case in sorted(p.name for p in test_dir.glob("case_*"))[:n]:
        ct = read_volume(test_dir / case / "imaging.nii.gz")
        out, secs = {}, {}
        for precision in ("fp32", "bf16"):
            t0 = time.perf_counter()
            out[precision] = predict(ct, run, precision=precision).array
            secs[precision] = time.perf_counter() - t0
        a, b = out["fp32"], out["bf16"]
        row = {"case": case, "fp32_s": secs["fp32"], "bf16_s": secs["bf16"],
               "voxels_differ": int((a != b).sum()), "kidney_voxels": int((a > 0).sum()),
               "tumor_voxels": int((a == 2).sum())}
        for name, fa, fb in (("kidney", a > 0, b > 0), ("tumor", a == 2, b == 2)):
            s = int(fa.sum()) + int(fb.sum())
            row[f"{name}_agreement"] = 1.0 if s == 0 else 2.0 * float(np.logical_and(fa, fb).sum()) / s
        rows.append(row)
        print(f"{case}: kidney {row['kidney_agreement']:.4f}, tumor {row['tumor_agreement']:.4f}, "
              f"{row['voxels_differ']} voxels differ; fp32 {secs['fp32']:.1f} s, bf16 {secs['bf16']:.1f} s", flush=True)
    return rows


def markdown(res: dict) -> str:
    rows = res["rows"]
    out = _common.header(TITLE, res["date"], res["machine"], res["command"], 2, res.get("load_end"))
    k = [r["kidney_agreement"] for r in rows]
    t = [r["tumor_agreement"] for r in rows if r["tumor_voxels"] > 0]
    out += [f"Model: the default recipe's leaderboard run ({res['run']}: `kitseg_cascade`, cpu profile, trained in "
            "bf16 on rendered phantoms). Each of the test phantoms is predicted by the same checkpoints in fp32 and "
            "in bf16 (interleaved, read and write excluded). Agreement = Dice between the two label maps.", "",
            "| cases | kidney agreement mean (min) | tumor agreement mean (min), cases with tumor | voxels that "
            "differ, median per case | seconds per case fp32 / bf16 (median) |", "|---|---|---|---|---|",
            f"| {len(rows)} | {statistics.fmean(k):.4f} ({min(k):.4f}) | "
            + (f"{statistics.fmean(t):.4f} ({min(t):.4f}), {len(t)}" if t else "-") + f" | "
            f"{statistics.median(r['voxels_differ'] for r in rows):.0f} | "
            f"{statistics.median(r['fp32_s'] for r in rows):.1f} / "
            f"{statistics.median(r['bf16_s'] for r in rows):.1f} |",
            "", f"Reading: goals kidney >= 0.99 and tumor >= 0.97: "
            f"{'met' if min(k) >= 0.99 and (not t or min(t) >= 0.97) else 'not met in every case'} (the worst case "
            "decides). The same checks run on tiny data in tests/test_precision.py; a paper-size network has not "
            "been trained here (days of CPU), so this is the largest trained model these figures can come from."]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=WORK / "kitseg_cascade" / "run")
    ap.add_argument("--test", type=Path, default=WORK / "test", help="the test cases (KiTS layout)")
    ap.add_argument("--cases", type=int, default=30)
    ap.add_argument("--no-update", action="store_true")
    _common.add_force_flag(ap)
    args = ap.parse_args()
    if not (args.run / "recipe.json").is_file():
        raise SystemExit(f"{args.run}: no trained run (run bench/bench_accuracy.py --entries kitseg_cascade first)")
    res = {"date": _common.now(), "machine": _common.machine(), "command": _common.command("bench_precision.py"),
           "run": str(args.run.relative_to(_common.ROOT)) if args.run.is_relative_to(_common.ROOT) else str(args.run),
           "rows": measure(args.run, args.test, args.cases)}
    res["load_end"] = _common.load_1min()
    _common.write_json(NAME, res)
    text = markdown(res)
    print(text)
    if not args.no_update:
        k = min(r["kidney_agreement"] for r in res["rows"])
        t = [r["tumor_agreement"] for r in res["rows"] if r["tumor_voxels"] > 0]
        _common.update_markdown(NAME, text, [("bf16 vs fp32 labels of one trained model, rendered test phantoms "
                                              "(worst case)", f"kidney Dice {k:.4f}, tumor "
                                              + (f"{min(t):.4f}" if t else "-"))], force=args.force)


if __name__ == "__main__":
    main()
