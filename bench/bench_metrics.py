"""Benchmark: per-case evaluation time (Dice, Surface Dice, HD95, MSD for kidney and tumor) on a large real
KiTS19 label map, kitseg vs MONAI's metric functions.

The ground truth is ../shared/data/kits19/case_00005 (834 x 512 x 512 at 0.5 x 0.98 x 0.98 mm, the largest
there); the prediction is that label map with the kidney dilated by one voxel and the tumor eroded by one,
and optionally with a small far-away false positive in a corner of the scan (which makes the box around
both masks the whole scan). MONAI gets each region as one-hot tensors cropped to the box around both
masks (its functions crop again inside); import times are excluded.

    .venv/bin/python bench/bench_metrics.py              # updates BENCHMARKS.md
    .venv/bin/python bench/bench_metrics.py --no-update
    .venv/bin/python bench/bench_metrics.py --quick      # case_00061 (29 slices): seconds; no update

Results: a table on stdout, JSON in bench/results/, and the section between ``<!-- metrics:start -->``
and ``<!-- metrics:end -->`` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy import ndimage

import _common

NAME = "metrics"
REGIONS = {"kidney": [1, 2], "tumor": [2]}
TOL = {"kidney": 1.0331, "tumor": 1.1498}


def _prediction(gt: np.ndarray, far: bool) -> np.ndarray:
    pred = gt.copy()
    pred[ndimage.binary_dilation(gt > 0) & (gt == 0)] = 1
    pred[(gt == 2) & ~ndimage.binary_erosion(gt == 2)] = 1
    if far:
        pred[:3, :4, :4] = 1
    return pred


def _ours(pred, gt, spacing) -> tuple[float, dict]:
    from kitseg.metrics import region_scores
    from kitseg.metrics.surface import _area_table

    _area_table(tuple(spacing))  # imports MONAI's table code: not timed
    t = time.perf_counter()
    scores = region_scores(pred, gt, spacing, REGIONS, TOL)
    return time.perf_counter() - t, scores


def _monai(pred, gt, spacing) -> tuple[float, dict]:
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    from kitseg.postprocessing import bbox

    t = time.perf_counter()
    box = bbox((pred > 0) | (gt > 0), margin=1)
    out = {}
    for name, labels in REGIONS.items():
        p, g = np.isin(pred[box], labels), np.isin(gt[box], labels)

        def onehot(m):
            x = torch.from_numpy(m.astype(np.float32))[None, None]
            return torch.cat([1 - x, x], 1)

        sp = [float(s) for s in spacing]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[name] = {
                "hd95_mm": float(compute_hausdorff_distance(onehot(p), onehot(g), percentile=95, spacing=sp)),
                "msd_mm": float(compute_average_surface_distance(onehot(p), onehot(g), symmetric=True, spacing=sp)),
                "surface_dice": float(compute_surface_dice(onehot(p), onehot(g), [TOL[name]], spacing=sp,
                                                           use_subvoxels=True)),
            }
    return time.perf_counter() - t, out


def _span(vals: list[float]) -> str:
    return f"{min(vals)}" if min(vals) == max(vals) else f"{min(vals)}-{max(vals)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="case_00005", help="the KiTS19 case whose label map is the ground truth "
                    "(default case_00005, the largest)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each method, interleaved: kitseg, MONAI, "
                    "kitseg, ... (3; the table gives the fastest-slowest)")
    ap.add_argument("--no-update", action="store_true", help="do not rewrite BENCHMARKS.md")
    _common.add_force_flag(ap)
    ap.add_argument("--quick", action="store_true", help="--case case_00061 (the smallest); implies --no-update")
    args = ap.parse_args()
    if args.quick:
        args.case, args.no_update, args.repeats = "case_00061", True, 1
    from kitseg.io import read_label

    vol = read_label(_common.require(_common.SHARED_KITS19 / args.case / "segmentation.nii.gz"))
    gt, spacing = vol.array, vol.spacing
    info = _common.machine()
    when = _common.now()  # the start
    rows = []
    for far in (False, True):
        pred = _prediction(gt, far)
        times: dict[str, list[float]] = {"kitseg": [], "monai": []}
        for _ in range(args.repeats):  # interleaved
            t_ours, ours = _ours(pred, gt, spacing)
            t_monai, monai = _monai(pred, gt, spacing)
            times["kitseg"].append(round(t_ours, 2))
            times["monai"].append(round(t_monai, 2))
        diff = max(abs(ours[r][k] - monai[r][k]) for r in REGIONS for k in ("hd95_mm", "msd_mm", "surface_dice"))
        rows.append({"prediction": "dilated kidney, eroded tumor" + (" + far false positive" if far else ""),
                     "kitseg_s": min(times["kitseg"]), "monai_s": min(times["monai"]), "runs": times,
                     "max_abs_difference": diff})
        print(rows[-1], flush=True)
    volume = f"{gt.shape} at {tuple(round(s, 3) for s in spacing)} mm"
    _common.write_json(NAME + ("-check" if args.no_update else ""),
                       {"date": when, "machine": info, "load_end": _common.load_1min(), "case": args.case,
                        "volume": volume, "rows": rows})
    lines = _common.header("Evaluation: surface metrics per case", when, info,
                           _common.command("bench_metrics.py"), load_end=_common.load_1min())
    lines += [f"KiTS19 {args.case} ground truth, {volume}; kidney and tumor regions; Surface Dice at the "
              "KiTS23 tolerances, HD95 and mean surface distance. MONAI: compute_hausdorff_distance, "
              "compute_average_surface_distance, compute_surface_dice(use_subvoxels=True) on the box around both "
              f"masks. {args.repeats} runs of each, interleaved (kitseg, MONAI, kitseg, ...): fastest-slowest; the "
              "ratios compare the fastest runs.", "", "| prediction | kitseg s | MONAI s | largest difference |",
              "|---|---|---|---|"]
    lines += [f"| {r['prediction']} | {_span(r['runs']['kitseg'])} | {_span(r['runs']['monai'])} | "
              f"{r['max_abs_difference']:.2g} |" for r in rows]
    lines += ["", "Reading: the same HD95, MSD and Surface Dice as MONAI (largest difference "
              f"{max(r['max_abs_difference'] for r in rows):.1g}), "
              + ", ".join(f"{r['monai_s'] / max(r['kitseg_s'], 1e-9):.1f}x faster" for r in rows)
              + " (without, with the far false positive, which makes MONAI's box the whole scan)."]
    text = "\n".join(lines)
    print(text)
    if not args.no_update:
        far = rows[-1]
        shape = "x".join(map(str, gt.shape))
        _common.update_markdown(NAME, text, [(f"surface metrics (HD95, MSD, Surface Dice; kidney and tumor) of "
                                              f"{args.case} ({shape}) with a far false positive",
                                              f"kitseg {far['kitseg_s']:.1f} s, MONAI {far['monai_s']:.0f} s")],
                                force=args.force)


if __name__ == "__main__":
    main()
