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

Results: a table on stdout, JSON in bench/results/, and the section between
``<!-- training:start -->`` and ``<!-- training:end -->`` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MD = ROOT / "BENCHMARKS.md"
START, END = "<!-- training:start -->", "<!-- training:end -->"
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
        sampler = Sampler(cases, st.sampler, geometry, augment, seed=0)
        batches = TrainBatches(sampler, st, targets, steps)
        t = time.perf_counter()
        for _ in batches.epoch():
            pass
        out[name] = (time.perf_counter() - t) / steps
    return out


def time_model(stage, batch, steps, device, geometry):
    from kitseg.losses import build_loss
    from kitseg.nets import build_network
    from kitseg.training.optim import build_optimizer

    torch.manual_seed(0)
    net = build_network(stage.network.name, stage.in_channels, stage.target.out_channels, **stage.network.params)
    net = net.to(device).train()
    fmt = torch.channels_last_3d if net.dims == 3 else torch.channels_last
    if device.type == "cuda":
        net = net.to(memory_format=fmt)
    opt = build_optimizer(stage.optimizer, net.parameters())
    loss_fn = build_loss(stage.loss, stage.target)
    shape = geometry.patch if net.dims == 3 else geometry.patch
    in_ch = stage.in_channels * (geometry.slices if net.dims == 2 else 1)
    x = torch.randn(batch, in_ch, *shape, device=device)
    y = torch.randint(0, stage.target.out_channels, (batch, *shape), device=device)
    amp = device.type == "cuda"
    times = []
    for i in range(steps + 1):  # the first step warms up (allocations, cuDNN autotuning)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = net(x.contiguous(memory_format=fmt) if device.type == "cuda" else x)
        loss = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="kitseg_cascade")
    ap.add_argument("--stage", action="append", help="only these stages")
    ap.add_argument("--batch", type=int, help="batch size (default: each stage's)")
    ap.add_argument("--steps", type=int, default=3, help="timed batches / steps per measurement")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-update", action="store_true", help="do not rewrite the BENCHMARKS.md section")
    args = ap.parse_args()

    from kitseg.nets import build_network
    from kitseg.recipes import load_recipe
    from kitseg.training.sampling import stage_geometry

    recipe = load_recipe(args.recipe)
    targets = {s.name: s.target for s in recipe.stages}
    device = torch.device(args.device)
    load = os.getloadavg()[0]
    rows = []
    for stage in recipe.stages:
        if args.stage and stage.name not in args.stage:
            continue
        batch = args.batch or stage.batch_size
        net = build_network(stage.network.name, stage.in_channels, stage.target.out_channels, **stage.network.params)
        geometry = stage_geometry(stage, net.dims, net.size_divisor, getattr(net, "context_slices", 1))
        spacing = tuple(stage.preprocess.target_spacing) if isinstance(stage.preprocess.target_spacing, list) \
            else (1.0, 1.0, 1.0)
        shape = SHAPES.get(stage.name, tuple(int(p * 1.3) for p in stage.patch_size or (64, 128, 128)))
        cases = [synthetic_case(shape, spacing, stage.target, s) for s in range(4)]
        data = time_data(stage, targets, cases, geometry, batch, args.steps)
        model = time_model(stage, batch, max(1, args.steps - 1), device, geometry)
        row = {"stage": stage.name, "network": stage.network.name, "patch": stage.patch_size, "batch": batch,
               "case_shape": list(shape), "data_cut_s": data["cut"], "data_s": data["cut_augment"], "model_s": model,
               "ratio": data["cut_augment"] / model}
        rows.append(row)
        print(f"{stage.name}: data {row['data_s']:.3f} s/batch (cutting alone {row['data_cut_s']:.3f}), "
              f"model {model:.3f} s/step on {device.type}, ratio {row['ratio']:.3f}", flush=True)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    info = {"date": stamp, "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "device": str(device), "load_1min": load, "recipe": args.recipe,
            "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"training-{stamp}.json").write_text(json.dumps(info, indent=1) + "\n")
    table = ["| stage | network | patch x batch | data s/batch (cut only) | model s/step | data / model |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['stage']} | {r['network']} | {'x'.join(map(str, r['patch']))} x {r['batch']} | "
                     f"{r['data_s']:.3f} ({r['data_cut_s']:.3f}) | {r['model_s']:.3f} | {r['ratio']:.3f} |")
    section = "\n".join([
        START, "## Training: data loading vs the model", "",
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}; {info['cores']} cores, {info['threads']} torch threads, device "
        f"{device}; 1-minute load average {load:.2f} at the start (a shared machine).",
        f"Command: `python bench/bench_training.py{' --batch ' + str(args.batch) if args.batch else ''}`", "",
        f"Recipe {args.recipe} at its full configuration, synthetic in-memory cases of realistic cached size "
        f"({', '.join(f'{k} {v}' for k, v in SHAPES.items())}); data = sampling, cutting and the stage's "
        "augmentation in the main process (workers=0); model = forward, loss, backward and optimizer step.", "",
        *table, END])
    print("\n".join(table))
    if not args.no_update:
        text = MD.read_text(encoding="utf-8") if MD.exists() else "# Benchmarks\n"
        if START in text and END in text:
            text = text[: text.index(START)] + section + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        MD.write_text(text)


if __name__ == "__main__":
    main()
