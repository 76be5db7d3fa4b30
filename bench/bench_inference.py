"""Benchmark inference: sliding window vs MONAI, the cascade vs a single stage, seconds and RSS per case.

Three parts (all on the CPU, networks with random weights: the figures are about time and memory,
not accuracy):

(a) ``--part sw``: ``kitseg.inference.sliding_window`` vs ``monai.inferers.sliding_window_inference``
    on the same network, input, patch and overlap (Gaussian, sigma 0.125): max |difference| and
    time, runs interleaved (ours, MONAI, ours, MONAI, ...), minimum per method reported.
(b) ``--part cascade``: per case (smallest, median and largest KiTS19 geometry), seconds and
    peak RSS of the default recipe (``kitseg_cascade``: 4 mm localizer + Zhang et al.'s stage 2 on
    one box per kidney) vs a single-stage sliding window of the same stage-2 network over the whole
    CT at the stage-2 spacing, once with ours and once with MONAI's ``sliding_window_inference``
    (same patch, overlap, Gaussian sigma), each in a fresh process. A single stage with more than
    ``--max-single-windows`` windows is extrapolated from its window count and a measured time per
    window instead (said so in the table).
(c) ``--part cases``: seconds (read, predict, write) and peak RSS per case for the smallest,
    median and largest KiTS19 geometry, tiny and paper-size networks, each in a fresh process.

Inputs: the real KiTS19 label geometry (case_00061 29x512x512, case_00018 121x512x512, case_00005
834x512x512) from ../shared, with a CT rendered from the label (``kitseg.synth.render_from_label``).
With random weights the localizer's mask would be arbitrary, so in (b) and (c) stage 1 runs its
network (timed) and then its mask is replaced by the ground-truth kidneys mapped onto its grid,
standing in for a trained localizer (the crop boxes are those a trained stage 1 would give).

    .venv/bin/python bench/bench_inference.py                  # everything (an hour or more on 2 cores)
    .venv/bin/python bench/bench_inference.py --part sw --no-update
    .venv/bin/python bench/bench_inference.py --part cascade --cases smallest   # remeasure one row
    .venv/bin/python bench/bench_inference.py --quick          # a few minutes: tiny networks, smallest case

Results: tables on stdout, JSON in bench/results/, and the section between
``<!-- inference:start -->`` and ``<!-- inference:end -->`` of BENCHMARKS.md (parts not run this
time keep their last figures from bench/results/inference.json); bench/_inference_report.py makes
the tables and the reading.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import _common
from _common import RESULTS, cpu_seconds, peak_rss_mb
from _inference_report import headlines, markdown, table_cascade, table_cases, table_sw

CACHE = RESULTS / "inference_inputs"
SHARED = _common.SHARED_KITS19
CASES = {"smallest": "case_00061", "median": "case_00018", "largest": "case_00005"}


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def fake_ct(case: str) -> Path:
    """A CT rendered from the case's real KiTS19 label (cached under bench/results/)."""
    out = CACHE / f"{case}_imaging.nii.gz"
    if out.exists():
        return out
    label = _common.require(SHARED / case / "segmentation.nii.gz")
    code = ("import sys; from kitseg.synth import render_from_label; from kitseg.io import write_volume; "
            f"write_volume(render_from_label({str(label)!r}, 0), {str(out)!r}); sys.stdout.flush(); "
            "import os; os._exit(0)")
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code], check=True, env=_common.env(2))
    return out


def _fingerprint():
    """Plausible CT statistics (the recipe's percentile z-score needs dataset statistics)."""
    from kitseg.preprocessing.records import Fingerprint, IntensityStats

    stats = IntensityStats(n_voxels=1, mean=-300.0, std=450.0, min=-1024.0, max=3071.0, p00_05=-1024.0,
                           p00_5=-1000.0, p99_5=900.0, p99_95=1500.0)
    roi = IntensityStats(n_voxels=1, mean=60.0, std=120.0, min=-1024.0, max=3071.0, p00_05=-900.0,
                         p00_5=-200.0, p99_5=400.0, p99_95=900.0)
    return Fingerprint(dataset="bench", n_cases=1, cases=[], median_spacing=(3.0, 0.8, 0.8),
                       median_shape=(100.0, 512.0, 512.0), spacing_p10=(1.0, 0.7, 0.7),
                       max_extent_mm=(500.0, 500.0, 500.0), class_fractions={},
                       intensity={"image": stats, "roi": roi, "foreground": roi})


def _recipe(tiny: bool, single: bool):
    from kitseg.recipes import load_recipe
    from kitseg.recipes.schema import Recipe

    recipe = load_recipe("kitseg_cascade", tiny=tiny)
    if not single:
        return recipe
    seg = recipe.stage("segment")
    pre = seg.preprocess.model_copy(update={"roi": None})
    seg = seg.model_copy(update={"inputs": ["ct"], "roi_from": None, "preprocess": pre})
    data = recipe.model_dump()
    data["stages"] = [seg.model_dump()]
    return Recipe.model_validate(data)


def _run(recipe, seed: int = 0):
    import torch

    from kitseg.datasets import KITS19
    from kitseg.inference import LoadedRun
    from kitseg.nets import build_network

    torch.manual_seed(seed)
    models = {s.name: [build_network(s.network.name, s.in_channels, s.target.out_channels,
                                     **s.network_params).eval()] for s in recipe.stages}
    return LoadedRun(recipe, KITS19, _fingerprint(), models)


def _oracle_localizer(label_path: Path):
    """Make stage 'localize' return the ground-truth kidneys on its grid (after running its network)."""
    import numpy as np

    from kitseg.inference import cascade
    from kitseg.io import read_label
    from kitseg.stages.grid import to_entry_grid

    gt = read_label(label_path).array > 0
    original = cascade.apply_stage_ops

    def apply_stage_ops(labels, context, steps=None):
        if context.stage.name == "localize":
            return to_entry_grid(gt, context.record).astype(np.uint8)
        return original(labels, context, steps)

    cascade.apply_stage_ops = apply_stage_ops


# ---------------------------------------------------------------------------------------------
# Workers (each in a fresh process)
# ---------------------------------------------------------------------------------------------
def worker_sw(net: str, shape, patch, overlap: float, reps: int) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    from kitseg.inference.sliding import count_windows, sliding_window
    from kitseg.nets import build_network

    torch.manual_seed(0)
    params = {"paper": {"base_features": 30, "pool_counts": (3, 5, 5)},
              "tiny": {"base_features": 8, "pool_counts": (2, 3, 3)}}[net]
    model = build_network("resunet_ds_zhang", 2, 3, **params).eval()

    def predictor(x):
        return torch.softmax(model(x), 1)

    img = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        predictor(img[None, :, :patch[0], :patch[1], :patch[2]])  # warm-up
    times = {"ours": [], "monai": []}
    ours = ref = None
    for _ in range(reps):
        for method in ("ours", "monai"):
            t0 = time.perf_counter()
            with torch.inference_mode():
                if method == "ours":
                    ours = sliding_window(img, predictor, patch, overlap)
                else:
                    ref = sliding_window_inference(img[None], patch, 1, predictor, overlap, mode="gaussian",
                                                   sigma_scale=0.125)[0]
            times[method].append(time.perf_counter() - t0)
    diff = float((ours - ref).abs().max())
    return {"net": net, "shape": list(shape), "patch": list(patch), "overlap": overlap,
            "windows": count_windows(shape, patch, overlap), "ours_s": times["ours"], "monai_s": times["monai"],
            "max_abs_diff": diff}


def _use_monai_sliding_window() -> None:
    """Make the inference's sliding windows MONAI's ``sliding_window_inference`` (same patch, overlap
    and Gaussian sigma), for the single-stage comparison."""
    import torch
    from monai.inferers import sliding_window_inference

    from kitseg.inference import cascade

    def monai_sw(image, predictor, patch_size, overlap=0.5, *, weights="gaussian", sw_batch_size=1, device="cpu",
                 **_):
        mode = "gaussian" if weights == "gaussian" else "constant"
        with torch.inference_mode():  # ours runs its windows without autograd too
            return sliding_window_inference(image[None].to(device), list(patch_size), sw_batch_size, predictor, overlap,
                                            mode=mode, sigma_scale=0.125)[0]

    cascade.sliding_window = monai_sw


def worker_case(case: str, tiny: bool, single: bool, out_dir: Path, monai: bool = False,
                precision: str = "fp32") -> dict:
    import torch

    from kitseg.inference import CaseTimings, predict_case
    from kitseg.io import read_volume, write_volume

    rss0 = peak_rss_mb()
    recipe = _recipe(tiny, single)
    run = _run(recipe)
    if not single:
        _oracle_localizer(SHARED / case / "segmentation.nii.gz")
    if monai:
        _use_monai_sliding_window()
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    ct = read_volume(fake_ct(case))
    t1 = time.perf_counter()
    timings = CaseTimings()
    pred = predict_case(ct, run, timings=timings, precision=precision)
    t2 = time.perf_counter()
    kind = ("single_monai" if monai else "single") if single else "cascade"
    write_volume(pred, out_dir / f"{case}_{'tiny' if tiny else 'paper'}_{kind}_{precision}.nii.gz")
    t3 = time.perf_counter()
    return {"case": case, "shape": list(ct.shape), "spacing": [round(s, 3) for s in ct.spacing], "tiny": tiny,
            "single": single, "monai": monai, "precision": precision, "read_s": t1 - t0, "predict_s": t2 - t1,
            "write_s": t3 - t2,
            "total_s": t3 - t0,
            "cpu_s": cpu_seconds() - c0, "stages_s": timings.stages, "windows": timings.windows,
            "peak_rss_mb": round(peak_rss_mb()),
            "rss_before_mb": round(rss0), "threads": torch.get_num_threads()}


def worker_window(tiny: bool, reps: int) -> dict:
    """Seconds per window of the stage-2 network (the single-stage extrapolation)."""
    import torch

    recipe = _recipe(tiny, True)
    stage = recipe.stages[0]
    model = _run(recipe).models[stage.name][0]
    x = torch.randn(1, stage.in_channels, *stage.patch_size)
    with torch.inference_mode():
        model(x)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.softmax(model(x), 1)
            best = min(best, time.perf_counter() - t0)
    return {"tiny": tiny, "patch": stage.patch_size, "window_s": best}


def single_windows(case: str, tiny: bool) -> int:
    """Windows of the single-stage sliding window over the whole CT at the stage-2 spacing (no image read)."""
    import nibabel as nib

    from kitseg.inference.sliding import count_windows
    from kitseg.preprocessing.resample import shape_for_spacing

    stage = _recipe(tiny, True).stages[0]
    img = nib.load(SHARED / case / "segmentation.nii.gz")
    shape, zooms = img.shape, img.header.get_zooms()  # KiTS19 files: (slices, 512, 512)
    grid = shape_for_spacing(shape, zooms, stage.preprocess.target_spacing)
    return count_windows(grid, stage.patch_size, stage.inference.overlap)


def spawn(args: list[str], threads: int) -> dict:
    return _common.spawn(__file__, args, threads)


# ---------------------------------------------------------------------------------------------
# Parts and report
# ---------------------------------------------------------------------------------------------
def part_sw(args) -> list[dict]:
    rows = []
    runs = (("tiny", (96, 192, 192), (32, 64, 64), 3), ("paper", (60, 160, 160), (40, 128, 128), args.reps))
    if args.quick:
        runs = (("tiny", (32, 96, 96), (32, 64, 64), 1),)
    for net, shape, patch, reps in runs:
        rows.append(spawn(["--worker", "sw", "--net", net, "--shape", *map(str, shape), "--patch",
                           *map(str, patch), "--reps", str(reps)], args.threads))
        print(table_sw(rows[-1:]), flush=True)
    return rows


def part_cases(args, kinds=("tiny", "paper"), cases=("smallest", "median", "largest")) -> list[dict]:
    """Read + predict + write per case, for each precision interleaved (fp32, bf16, fp32, bf16 ...)."""
    rows = []
    for kind in kinds:
        for which in cases:
            fake_ct(CASES[which])
            for precision in args.precisions:
                r = spawn(["--worker", "case", "--case", CASES[which], "--precision", precision,
                           *(["--tiny"] if kind == "tiny" else [])], args.threads)
                r["which"] = which
                rows.append(r)
                print(table_cases(rows[-1:]), flush=True)
    return rows


def part_cascade(args, case_rows: list[dict], cases=("smallest", "median", "largest")) -> list[dict]:
    per_window = spawn(["--worker", "window", "--reps", "3"], args.threads)["window_s"]
    rows = []
    for which in cases:
        case = CASES[which]
        cascade = next((r for r in case_rows if r["case"] == case and not r["tiny"] and not r["single"]
                        and r.get("precision", "fp32") == "fp32"), None)
        if cascade is None:
            fake_ct(case)
            cascade = spawn(["--worker", "case", "--case", case], args.threads)
        n = single_windows(case, False)
        row = {"which": which, "case": case, "shape": cascade["shape"], "cascade_s": cascade["predict_s"],
               "cascade_rss_mb": cascade["peak_rss_mb"], "cascade_windows": cascade["windows"],
               "single_windows": n, "window_s": per_window}
        if n > args.max_single_windows:
            row.update(single_s=n * per_window, single_measured=False)
        else:
            single = spawn(["--worker", "case", "--case", case, "--single"], args.threads)
            monai = spawn(["--worker", "case", "--case", case, "--single", "--monai"], args.threads)
            row.update(single_s=single["predict_s"], single_measured=True, single_rss_mb=single["peak_rss_mb"],
                       monai_s=monai["predict_s"], monai_rss_mb=monai["peak_rss_mb"],
                       labels_differ=_labels_differ(case))
        row["ratio"] = row["cascade_s"] / row["single_s"]
        rows.append(row)
        print(table_cascade(rows[-1:]), flush=True)
    return rows


def _labels_differ(case: str) -> int:
    """Voxels where the single stage's label maps with ours and with MONAI's sliding window differ."""
    import nibabel as nib
    import numpy as np

    out = RESULTS / "inference_outputs"
    a, b = (np.asarray(nib.load(out / f"{case}_paper_{k}.nii.gz").dataobj) for k in ("single", "single_monai"))
    return int((a != b).sum())


def merge_rows(old: list[dict], new: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """The rows measured now replace the earlier rows with the same ``keys``; the table keeps the
    order smallest, median, largest (tiny before paper-size)."""
    done = {tuple(r.get(k) for k in keys) for r in new}
    rows = [r for r in old if tuple(r.get(k) for k in keys) not in done] + new
    return sorted(rows, key=lambda r: (bool(not r.get("tiny", False)), list(CASES).index(r["which"])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", nargs="+", choices=("sw", "cascade", "cases"), default=["sw", "cases", "cascade"])
    ap.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES),
                    help="the KiTS19 geometries of parts cascade and cases (default: all three; rows of the others "
                    "keep their last figures)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--reps", type=int, default=2, help="interleaved repetitions of the paper-size sliding window")
    ap.add_argument("--max-single-windows", type=int, default=400,
                    help="extrapolate a single-stage run with more windows than this (default 400)")
    ap.add_argument("--no-update", action="store_true", help="do not rewrite the section of BENCHMARKS.md")
    _common.add_force_flag(ap)
    ap.add_argument("--worker", choices=("sw", "case", "window"), help=argparse.SUPPRESS)
    ap.add_argument("--net", default="paper", help=argparse.SUPPRESS)
    ap.add_argument("--shape", type=int, nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--patch", type=int, nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--monai", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
                    help="precisions of the per-case part (kitseg.precision; default both, interleaved)")
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true",
                    help="a few minutes: tiny networks only (sliding window on a small input, the smallest case); "
                    "implies --no-update")
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        if args.worker == "sw":
            res = worker_sw(args.net, args.shape, args.patch, 0.5, args.reps)
        elif args.worker == "case":
            out_dir = RESULTS / "inference_outputs"
            out_dir.mkdir(parents=True, exist_ok=True)
            res = worker_case(args.case, args.tiny, args.single, out_dir, args.monai, args.precision)
        else:
            res = worker_window(args.tiny, args.reps)
        _common.worker_exit(res)
    if args.quick:
        _common.require(SHARED / CASES["smallest"] / "segmentation.nii.gz")
        res = {"date": _common.now(), "machine": _common.machine(), "threads": args.threads,
               "command": _common.command("bench_inference.py")}
        res["sw"] = part_sw(args)
        res["cases"] = part_cases(args, kinds=("tiny",), cases=("smallest",))
        print(markdown(res))
        return
    _common.require(SHARED)
    name = "inference"
    res = _common.read_json(name)  # parts not run now keep their last figures
    res.update(date=_common.now(), machine=_common.machine(), threads=args.threads,
               command=_common.command("bench_inference.py"))
    # each run keeps its own load average at the start and the end: rows of earlier runs keep their figures
    run = {"date": res["date"], "command": res["command"], "load_start": _common.START_LOAD}

    def tag(rows):  # which run measured a row (rows of earlier runs keep theirs)
        return [{**r, "run": run["date"]} for r in rows]

    if "sw" in args.part:
        res["sw"] = tag(part_sw(args))
    cases = tuple(c for c in CASES if c in args.cases)  # in the table's order
    if "cases" in args.part:
        res["cases"] = merge_rows([r for r in res.get("cases", []) if "precision" in r],
                                  tag(part_cases(args, cases=cases)), ("which", "tiny", "precision"))
    if "cascade" in args.part:
        new = part_cascade(args, res.get("cases", []) if "cases" in args.part else [], cases)
        res["cascade"] = merge_rows(res.get("cascade", []), tag(new), ("which",))
    res["load_end"] = run["load_end"] = _common.load_1min()
    res["runs"] = [r for r in res.get("runs", []) if r["date"] != run["date"]] + [run]
    _common.write_json(name, res)
    text = markdown(res)
    print(text)
    if not args.no_update:
        _common.update_markdown(name, text, headlines(res), force=args.force)


if __name__ == "__main__":
    main()
