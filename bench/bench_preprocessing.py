"""Benchmark: resampling a KiTS19-sized CT to 1 mm slices and back, ours vs SimpleITK vs scipy.

The volume has case_00000's geometry (611 x 512 x 512 voxels at 0.5 x 0.92 x 0.92 mm, float32,
seeded random values). Each method runs in a fresh subprocess that reports its wall-clock seconds
(forward, back) and its peak RSS; the input array (640 MB) is part of every method's RSS.
Also times intensity normalization (ours, in place, vs the plain numpy expression).

    .venv/bin/python bench/bench_preprocessing.py            # all methods, updates BENCHMARKS.md
    .venv/bin/python bench/bench_preprocessing.py --shape 153 128 128 --no-update   # a quick look
    .venv/bin/python bench/bench_preprocessing.py --quick   # the same

Results: a table on stdout, JSON in bench/results/, and the section between
``<!-- preprocessing:start -->`` and ``<!-- preprocessing:end -->`` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import _common
from _common import peak_rss_mb

METHODS = ("ours", "sitk", "scipy", "ours_inplane", "sitk_inplane", "ours_labels", "sitk_labels", "norm_ours",
           "norm_numpy")


def _volume(shape, spacing):
    import numpy as np

    from kitseg.volume import Volume

    rng = np.random.default_rng(0)
    arr = rng.standard_normal(size=tuple(shape), dtype=np.float32)
    arr *= 300.0
    return Volume.from_geometry(arr, spacing=spacing, origin=(-200.0, -180.0, 100.0))


def worker(method: str, shape, spacing, target_z: float, threads: int) -> dict:
    """Run one method in this (fresh) process and return its figures."""
    import numpy as np

    vol = _volume(shape, spacing)
    rss_input = peak_rss_mb()
    out: dict = {"method": method}
    inplane = (256, 256) if method.endswith("_inplane") else None  # 3D ResUNet 2.2: 2 mm slices, 256 x 256
    z_mm = 2.0 if inplane else target_z
    labels = method.endswith("_labels")
    if labels:  # a label map with kidney (1) and tumor (2) blocks
        arr = np.zeros(vol.shape, np.uint8)
        arr[100:400, 150:350, 50:200] = 1
        arr[200:300, 200:300, 80:150] = 2
        vol = vol.with_array(arr)
    if method.startswith("ours"):
        import torch

        from kitseg.preprocessing.resample import resample
        from kitseg.stages.grid import restore

        torch.set_num_threads(threads)
        from kitseg.preprocessing.grid import shape_for_spacing

        shape = (shape_for_spacing(vol.shape, vol.spacing, (z_mm, None, None))[0], *inplane) if inplane else None
        order = "nearest" if labels else "linear"
        t0 = time.perf_counter()
        res, rec = resample(vol, spacing=None if inplane else (z_mm, None, None), shape=shape, order=order)
        t1 = time.perf_counter()
        back = restore(res, rec, order=order)
        t2 = time.perf_counter()
        out.update(resampled_shape=list(res.shape), back_shape=list(back.shape))
    elif method.startswith("sitk"):
        import SimpleITK as sitk

        from kitseg.io import to_sitk
        from kitseg.preprocessing.grid import grid_affine, shape_for_spacing

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        img = to_sitk(vol)
        new_shape = shape_for_spacing(vol.shape, vol.spacing, (z_mm, None, None))
        if inplane:
            new_shape = (new_shape[0], *inplane)
        aff = grid_affine(vol.affine, vol.shape, new_shape)
        sp = np.linalg.norm(aff[:3, :3], axis=0)
        interp = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
        pixel = sitk.sitkUInt8 if labels else sitk.sitkFloat32
        t0 = time.perf_counter()
        res = sitk.Resample(img, [int(n) for n in new_shape[::-1]], sitk.Transform(), interp,
                            [float(v) for v in aff[:3, 3]], [float(v) for v in sp[::-1]], img.GetDirection(),
                            0, pixel)
        t1 = time.perf_counter()
        back = sitk.Resample(res, img, sitk.Transform(), interp, 0, pixel)
        t2 = time.perf_counter()
        out.update(resampled_shape=list(res.GetSize()[::-1]), back_shape=list(back.GetSize()[::-1]))
    elif method == "scipy":
        from scipy import ndimage

        from kitseg.preprocessing.grid import shape_for_spacing

        new_shape = shape_for_spacing(vol.shape, vol.spacing, (target_z, None, None))
        t0 = time.perf_counter()
        res = ndimage.zoom(vol.array, np.divide(new_shape, vol.shape), order=1, grid_mode=True, mode="nearest")
        t1 = time.perf_counter()
        back = ndimage.zoom(res, np.divide(vol.shape, res.shape), order=1, grid_mode=True, mode="nearest")
        t2 = time.perf_counter()
        out.update(resampled_shape=list(res.shape), back_shape=list(back.shape))
    elif method in ("norm_ours", "norm_numpy"):
        from kitseg.preprocessing.intensity import normalize
        from kitseg.preprocessing.records import IntensityStats
        from kitseg.preprocessing.spec import IntensitySpec

        stats = IntensityStats(n_voxels=1, mean=100.0, std=80.0, min=-1000, max=2000, p00_05=-900.0, p00_5=-200.0,
                               p99_5=300.0, p99_95=900.0)
        t0 = time.perf_counter()
        if method == "norm_ours":
            res = normalize(vol.array, IntensitySpec(scheme="nnunet_ct"), stats)
        else:
            res = ((np.clip(vol.array, stats.p00_5, stats.p99_5) - stats.mean) / stats.std).astype(np.float32)
        t1 = t2 = time.perf_counter()
    else:
        raise SystemExit(f"unknown method {method}")
    out.update(forward_s=round(t1 - t0, 3), back_s=round(t2 - t1, 3), total_s=round(t2 - t0, 3),
               peak_rss_mb=round(peak_rss_mb()), input_rss_mb=round(rss_input))
    return out


def run_method(method: str, args) -> dict:
    return _common.spawn(__file__, ["--worker", method, "--shape", *map(str, args.shape), "--spacing",
                                    *map(str, args.spacing), "--target-z", str(args.target_z)], args.threads, method)


def _span(runs: list[dict], key: str) -> str:
    vals = sorted(r[key] for r in runs)
    return f"{vals[0]}" if vals[0] == vals[-1] else f"{vals[0]}-{vals[-1]}"


def table(runs: list[dict]) -> str:
    """One row per method: the fastest-slowest of its runs."""
    lines = ["| method | runs | forward s | back s | total s | peak RSS MB (input alone) |",
             "|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        lines.append(f"| {rs[0]['label']} | {len(rs)} | {_span(rs, 'forward_s')} | {_span(rs, 'back_s')} | "
                     f"{_span(rs, 'total_s')} | {max(r['peak_rss_mb'] for r in rs)} ({rs[0]['input_rss_mb']}) |")
    return "\n".join(lines)


LABELS = {"ours": "kitseg resample + restore, linear", "sitk": "SimpleITK Resample, linear",
          "scipy": "scipy.ndimage.zoom, order=1",
          "ours_inplane": "kitseg, linear, 2 mm slices + 256 x 256 (3D ResUNet) and back",
          "sitk_inplane": "SimpleITK, linear, 2 mm slices + 256 x 256 and back",
          "ours_labels": "kitseg, uint8 labels, nearest, 1 mm slices and back",
          "sitk_labels": "SimpleITK, uint8 labels, nearest, 1 mm slices and back",
          "norm_ours": "normalize nnunet_ct (kitseg, chunked)", "norm_numpy": "normalize, plain numpy expression"}


TITLE = "Preprocessing: resampling and normalization"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[611, 512, 512], help="z y x voxels (default KiTS19 case 0)")
    ap.add_argument("--spacing", type=float, nargs=3, default=[0.5, 0.92, 0.92], help="z y x mm")
    ap.add_argument("--target-z", type=float, default=1.0, help="slice spacing to resample to, mm (default 1.0)")
    ap.add_argument("--threads", type=int, default=2, help="threads for torch / SimpleITK (default 2)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each method, interleaved: A, B, A, B, ... (3)")
    ap.add_argument("--no-update", action="store_true", help="do not rewrite the section of BENCHMARKS.md")
    _common.add_force_flag(ap)
    ap.add_argument("--quick", action="store_true", help="a 153 x 128 x 128 volume (seconds); implies --no-update")
    ap.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _common.worker_exit(worker(args.worker, args.shape, args.spacing, args.target_z, args.threads))
    if args.quick:
        args.shape, args.no_update, args.repeats = [153, 128, 128], True, 1
    info = _common.machine()
    when = _common.now()  # the start
    runs = []
    methods = list(dict.fromkeys(args.methods))
    for i in range(args.repeats):  # interleaved: every method once, then again
        for m in methods:
            r = run_method(m, args)
            r["label"] = LABELS[m]
            runs.append(r)
            print(f"{m} run {i + 1}: {r['total_s']} s, peak RSS {r['peak_rss_mb']} MB", file=sys.stderr)
    by = {m: min((r for r in runs if r["method"] == m), key=lambda r: r["total_s"]) for m in methods}  # fastest
    verdict = []

    def ratio(a: str, b: str, what: str) -> None:
        if a in by and b in by:
            x = by[b]["total_s"] / max(by[a]["total_s"], 1e-9)
            verdict.append(f"{what}: {x:.1f}x faster" if x >= 1 else f"{what}: {1 / x:.1f}x slower")

    ratio("ours", "sitk", "kitseg linear vs SimpleITK")
    ratio("ours", "scipy", "kitseg linear vs scipy.ndimage.zoom")
    ratio("ours_inplane", "sitk_inplane", "kitseg 2 mm + 256 x 256 vs SimpleITK")
    ratio("ours_labels", "sitk_labels", "kitseg nearest labels vs SimpleITK")
    ratio("norm_ours", "norm_numpy", "normalization vs the plain numpy expression")
    lines = _common.header(TITLE, when, info, _common.command("bench_preprocessing.py"), args.threads,
                           _common.load_1min())
    lines += [f"Volume {args.shape[0]}x{args.shape[1]}x{args.shape[2]} float32 at "
              f"{'x'.join(map(str, args.spacing))} mm (seeded random values) -> {args.target_z} mm slices -> back, "
              "unless the row says otherwise. Each run is a fresh process; the methods ran interleaved (A, B, A, "
              "B, ...), the table gives the fastest-slowest of each method's runs, the ratios compare the fastest "
              "runs. Peak RSS includes the input array (in brackets: the RSS right after making it). forward = to "
              "the new grid, back = to the original grid.", "", table(runs), ""]
    if verdict:
        lines.append("; ".join(verdict) + ".")
    md = "\n".join(lines)
    print(md)
    _common.write_json("preprocessing", {"machine": info, "load_end": _common.load_1min(), "args": vars(args),
                                         "runs": runs}, stamped=True)
    if not args.no_update:
        heads = []
        if "ours" in by and "sitk" in by and "scipy" in by:
            heads.append((f"resample a {'x'.join(map(str, args.shape))} CT to {args.target_z} mm slices and back "
                          "(linear)", f"kitseg {by['ours']['total_s']:.1f} s, SimpleITK {by['sitk']['total_s']:.1f} "
                          f"s, scipy {by['scipy']['total_s']:.1f} s"))
        _common.update_markdown("preprocessing", md, heads, force=args.force)


if __name__ == "__main__":
    main()
