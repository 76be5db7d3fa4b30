"""Run every benchmark in bench/ in turn (``make bench``), each in its own process.

Each script prints its table, writes JSON under bench/results/ and rewrites its section of
BENCHMARKS.md. A script that fails stops the run with a message naming it and its exit status
(the sections written before stay). ``--quick`` passes each script its ``--quick`` flag (small
inputs, tiny networks, BENCHMARKS.md left alone): a check that everything runs, in about 15 minutes
on 2 cores. At the default settings the whole run takes several hours on 2 CPU cores
(inference about 1.5 h, accuracy about 1 h, throughput about 0.5 h).

    .venv/bin/python bench/run_all.py                     # everything, updates BENCHMARKS.md
    .venv/bin/python bench/run_all.py --quick             # everything, quickly, no updates
    .venv/bin/python bench/run_all.py --only throughput --only accuracy
    .venv/bin/python bench/run_all.py --list
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# name -> (script, what it measures); run in this order (cheap first)
SCRIPTS = {
    "preprocessing": ("bench_preprocessing.py", "resampling and normalization: kitseg vs SimpleITK vs scipy"),
    "io": ("bench_io.py", "reading and writing .nii.gz: kitseg.io now vs an earlier revision"),
    "metrics": ("bench_metrics.py", "surface metrics per case: kitseg vs MONAI"),
    "realism": ("bench_realism.py", "synthetic CT vs a real CT slab: HU per tissue (docs/SYNTH.md)"),
    "training": ("bench_training.py", "data loading vs the model in training"),
    "throughput": ("bench_throughput.py", "training throughput and peak memory of every recipe's networks"),
    "inference": ("bench_inference.py", "inference: sliding window vs MONAI, cascade vs single stage, s and RSS"),
    "accuracy": ("bench_accuracy.py", "accuracy on rendered phantoms: cascade vs single stage, same CPU budget"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="pass --quick to every script (no BENCHMARKS.md updates)")
    ap.add_argument("--only", action="append", choices=tuple(SCRIPTS), metavar="NAME",
                    help=f"run only this benchmark (repeatable): {', '.join(SCRIPTS)}")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, (script, what) in SCRIPTS.items():
            print(f"{name:14s} bench/{script:24s} {what}")
        return 0
    names = [n for n in SCRIPTS if not args.only or n in args.only]
    t_all = time.perf_counter()
    for i, name in enumerate(names, 1):
        script, what = SCRIPTS[name]
        cmd = [sys.executable, str(BENCH / script), *(["--quick"] if args.quick else [])]
        print(f"\n=== [{i}/{len(names)}] {name}: {what}\n=== {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        if rc != 0:
            print(f"\nrun_all: bench/{script} failed (exit status {rc}) after {time.perf_counter() - t0:.0f} s; "
                  f"stopping. Run it alone to see why: python bench/{script}"
                  + (" --quick" if args.quick else ""), file=sys.stderr)
            return rc if 0 < rc < 256 else 1
        print(f"=== {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\nrun_all: {len(names)} benchmark(s) done in {(time.perf_counter() - t_all) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
