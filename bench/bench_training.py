"""Benchmark: does data loading (sampling + augmentation) keep up with the model during training?

For each stage of a recipe (default: kitseg_cascade at its full, paper-size configuration) this
times, on in-memory synthetic cases of a realistic size:

- data: one batch drawn, cut and augmented in the main process (``workers=0``), split into cutting
  alone (no augmentation) and cutting + the stage's augmentation;
- model: one training step of the stage's network (forward, loss, backward, optimizer step) on
  this machine's device;

and reports seconds per batch and the ratio data / model. A ratio well below 1 means one process
feeds the model; above 1 the model waits and ``kitseg train --workers N`` (N about the ratio)
moves the cutting into N worker processes.

    .venv/bin/python bench/bench_training.py                   # both stages, recipe batch sizes
    .venv/bin/python bench/bench_training.py --batch 1 --steps 2 --no-update   # a quicker look
    .venv/bin/python bench/bench_training.py --quick          # the tiny recipe: seconds

Results: a table on stdout, JSON in bench/results/, and the section between
``<!-- training:start -->`` and ``<!-- training:end -->`` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import _common
from bench_throughput import time_train_steps

NAME = "training"
TITLE = "Training: data loading vs the model"
# realistic cached shapes: a KiTS19 CT at 4 mm (stage 1) and a per-kidney crop (stage 2)
SHAPES = {"localize": (96, 110, 110), "segment": (56, 150, 150)}


def synthetic_case(shape, spacing, target, seed):
    from kitseg.training.sampling import make_train_case

    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    img = rng.normal(0.0, 1.0, shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    for cx in (-0.45, 0.45):
        inside = (z / 0.3) ** 2 + (y / 0.35) ** 2 + ((x - cx) / 0.2) ** 2 <= 1
        lab[inside] = 1
        img[inside] += 2.0
    tumor = (z / 0.12) ** 2 + (y / 0.12) ** 2 + ((x - 0.5) / 0.1) ** 2 <= 1
    lab[tumor] = 2
    return make_train_case(f"c{seed}", img, lab, spacing, target, seed)


def time_data(stage, targets, cases, geometry, batch, steps):
    from kitseg.recipes.schema import AugmentSpec
    from kitseg.training.data import TrainBatches
    from kitseg.training.sampling import Sampler

    out = {}
    for name, augment in (("cut", AugmentSpec()), ("cut_augment", stage.augmentation)):
        st = stage.model_copy(update={"batch_size": batch, "augmentation": augment})
        sampler = Sampler(cases, st.sampler, geometry, augment, seed=0, classes=list(st.target.classes))
        batches = TrainBatches(sampler, st, targets, steps)
        t = time.perf_counter()
        for _ in batches.epoch():
            pass
        out[name] = (time.perf_counter() - t) / steps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="kitseg_cascade")
    ap.add_argument("--stage", action="append", help="only these stages")
    ap.add_argument("--batch", type=int, help="batch size (default: each stage's)")
    ap.add_argument("--steps", type=int, default=3, help="timed batches / steps per measurement (default 3)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="the recipe's --tiny configuration")
    ap.add_argument("--no-update", action="store_true", help="do not rewrite the BENCHMARKS.md section")
    ap.add_argument("--quick", action="store_true", help="--tiny --batch 1 --steps 1; implies --no-update")
    args = ap.parse_args()
    if args.quick:
        args.tiny, args.batch, args.steps, args.no_update = True, 1, 1, True

    from kitseg.nets import build_network
    from kitseg.recipes import load_recipe
    from kitseg.training.sampling import stage_geometry

    recipe = load_recipe(args.recipe, tiny=args.tiny)
    targets = {s.name: s.target for s in recipe.stages}
    device = torch.device(args.device)
    info = _common.machine(gpu=device.type == "cuda")
    when = _common.now()  # the start
    rows = []
    for stage in recipe.stages:
        if args.stage and stage.name not in args.stage:
            continue
        batch = args.batch or stage.batch_size
        net = build_network(stage.network.name, stage.in_channels, stage.target.out_channels, **stage.network_params)
        geometry = stage_geometry(stage, net.dims, net.size_divisor, getattr(net, "context_slices", 1))
        spacing = tuple(stage.preprocess.target_spacing) if isinstance(stage.preprocess.target_spacing, list) \
            else (1.0, 1.0, 1.0)
        shape = SHAPES.get(stage.name, tuple(int(p * 1.3) for p in stage.patch_size or (64, 128, 128)))
        cases = [synthetic_case(shape, spacing, stage.target, s) for s in range(4)]
        data = time_data(stage, targets, cases, geometry, batch, args.steps)
        mode = "amp_cl" if device.type == "cuda" else "fp32"  # what the training loop does
        model = time_train_steps(stage, batch, 1, max(1, args.steps - 1), args.device, mode)["median_step_s"]
        row = {"stage": stage.name, "network": stage.network.name, "patch": stage.patch_size, "batch": batch,
               "case_shape": list(shape), "data_cut_s": data["cut"], "data_s": data["cut_augment"], "model_s": model,
               "ratio": data["cut_augment"] / model}
        rows.append(row)
        print(f"{stage.name}: data {row['data_s']:.3f} s/batch (cutting alone {row['data_cut_s']:.3f}), "
              f"model {model:.3f} s/step on {device.type}, ratio {row['ratio']:.3f}", flush=True)

    _common.write_json(NAME, {"machine": info, "device": str(device), "threads": torch.get_num_threads(),
                              "recipe": args.recipe, "tiny": args.tiny, "rows": rows}, stamped=True)
    table = ["| stage | network | patch x batch | data s/batch (cut only) | model s/step | data / model |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['stage']} | {r['network']} | {'x'.join(map(str, r['patch']))} x {r['batch']} | "
                     f"{r['data_s']:.3f} ({r['data_cut_s']:.3f}) | {r['model_s']:.3f} | {r['ratio']:.3f} |")
    lines = _common.header(TITLE, when, info, _common.command("bench_training.py"), torch.get_num_threads())
    lines += [f"Recipe {args.recipe} at its {'tiny' if args.tiny else 'full'} configuration, device {device}, "
              "synthetic in-memory cases of realistic cached size "
              f"({', '.join(f'{k} {v}' for k, v in SHAPES.items())}); data = sampling, cutting and the stage's "
              "augmentation in the main process (workers=0); model = forward, loss, backward and optimizer step "
              "(bench_throughput.py's step).", "", *table]
    if rows:
        worst = max(rows, key=lambda r: r["ratio"])
        lines += ["", f"Reading: cutting and augmenting a batch takes at most {100 * worst['ratio']:.1f} % of a "
                  f"training step on {device.type} ({worst['stage']}): one process feeds the model"
                  + (" here; a GPU's much shorter steps need `kitseg train --workers N` with N about data / model."
                     if device.type == "cpu" else "." if worst["ratio"] < 0.5 else
                     f"; use `kitseg train --workers {int(worst['ratio']) + 1}` or more.")]
    text = "\n".join(lines)
    print(text)
    if not args.no_update:
        _common.update_markdown(NAME, text)


if __name__ == "__main__":
    main()
