"""Benchmark: training throughput (patches per second) and peak memory of every recipe's paper-size networks.

For every recipe of ``kitseg recipes`` and every stage, at the recipe's own network, patch (or
whole-volume shape) and loss, one training step is what the training loop does
(``kitseg.training.loop.Engine.train_epoch``): forward, loss (with deep supervision where the
recipe has it), backward and the recipe's optimizer step, on a random input of the stage's patch
size and a random label map. Each (recipe, stage, mode) runs in a fresh process: a warm-up step
(allocations, oneDNN/cuDNN set-up), then the timed steps; patches per second = batch / the
median timed step; peak RSS = that process's peak resident memory (torch, the network, the
optimizer state, activations), with the RSS before the first step beside it.

On the CPU a paper-size 3D step takes seconds to a minute on 2 cores, so the defaults there are
batch 1, one warm-up and one timed step, in fp32 and bf16 (``kitseg.precision``: autocast of the
forward pass; the loss in fp32), interleaved per stage, for every recipe at its paper size and at its
``cpu`` profile (``--profiles``); the "x fp32" column is the speed-up of each mode over fp32 of the
same stage. On CUDA (``--device cuda``, the default when a GPU is visible) the defaults are the
recipe's batch size, 3 warm-up and 10 timed steps, and six modes: fp32 (TF32 convolutions as
torch's default), bf16, fp16 with a GradScaler, each with and without channels_last(_3d); peak CUDA
memory is ``torch.cuda.max_memory_allocated``.

    .venv/bin/python bench/bench_throughput.py                       # CPU: every recipe, paper + cpu profiles
    .venv/bin/python bench/bench_throughput.py --device cuda          # on a GPU: the six modes
    .venv/bin/python bench/bench_throughput.py --recipes unet3d --profiles cpu --steps 2 --no-update
    .venv/bin/python bench/bench_throughput.py --quick                # the recipes' tiny profiles (a minute)

Results: a table on stdout, JSON in bench/results/throughput-<device>.json, and a section of
BENCHMARKS.md: a CPU run rewrites the one between ``<!-- throughput:start -->`` and
``<!-- throughput:end -->``, a CUDA run the one between ``<!-- throughput-gpu:start -->`` and
``<!-- throughput-gpu:end -->`` (which says that no GPU figure exists until one does).
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common
from _common import peak_rss_mb

NAME = "throughput"
TITLE = "Training throughput of every recipe, paper size and cpu profile, fp32 and bf16"
# precision (kitseg.precision: autocast of the forward pass), optionally with channels_last(_3d) memory
MODES = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16 + GradScaler",
         "fp32_cl": "fp32 + channels_last", "bf16_cl": "bf16 + channels_last", "fp16_cl": "fp16 + channels_last"}
ALIASES = {"amp": "auto", "amp_cl": "auto_cl"}  # the old names: the precision auto picks on the device


def stage_input(stage, net) -> tuple[int, tuple[int, ...]]:
    """(input channels, spatial shape) of one training sample of ``stage`` for ``net``."""
    from kitseg.training.sampling import stage_geometry

    geometry = stage_geometry(stage, net.dims, net.size_divisor, getattr(net, "context_slices", 1))
    if geometry.patch is not None:
        shape = tuple(geometry.patch)
    else:  # sampler "whole": the preprocessed volume, padded to the network's divisor
        target = stage.preprocess.target_shape
        if target is None:
            raise SystemExit(f"stage {stage.name!r} has neither a patch size nor a target shape")
        shape = tuple(-(-int(s) // int(d)) * int(d) for s, d in zip(target, net.size_divisor))
    channels = stage.in_channels * (geometry.slices if net.dims == 2 else 1)
    return channels, shape


def time_train_steps(stage, batch: int, warmup: int, steps: int, device: str = "cpu", mode: str = "fp32",
                     seed: int = 0) -> dict:
    """Time ``warmup`` + ``steps`` training steps of ``stage``'s network at ``batch`` (see the module docstring)."""
    import numpy as np
    import torch

    from kitseg.losses import build_loss
    from kitseg.nets import build_network
    from kitseg.precision import as_float, resolve_precision
    from kitseg.stages.targets import make_target
    from kitseg.training.optim import build_optimizer
    from kitseg.training.sampling import collate

    dev = torch.device(device)
    channels_last = mode.endswith("_cl")
    prec = resolve_precision(mode.removesuffix("_cl"), dev)
    mode = prec.name + ("_cl" if channels_last else "")
    torch.manual_seed(seed)
    net = build_network(stage.network.name, stage.in_channels, stage.target.out_channels, **stage.network_params)
    channels, shape = stage_input(stage, net)
    fmt = torch.channels_last_3d if net.dims == 3 else torch.channels_last
    net = net.to(dev).train()
    if channels_last:
        net = net.to(memory_format=fmt)
    scaler = torch.amp.GradScaler("cuda", enabled=prec.uses_scaler)
    opt = build_optimizer(stage.optimizer, net.parameters())
    loss_fn = build_loss(stage.loss, stage.target)
    rng = np.random.default_rng(seed)
    samples = [(rng.standard_normal((channels, *shape), dtype=np.float32),
                make_target(rng.integers(0, 3, shape, dtype=np.uint8), stage.target)) for _ in range(batch)]
    x, y = collate(samples, stage.target.kind == "softmax")
    del samples
    x, y = x.to(dev), y.to(dev)
    if channels_last:
        x = x.contiguous(memory_format=fmt)
    rss_before = peak_rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(warmup + steps):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        with prec.autocast():
            out = net(x)
        loss = loss_fn(as_float(out), y, 0)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
        del out, loss
    step = statistics.median(times[warmup:]) if steps else float("nan")
    return {"network": stage.network.name, "params": sum(p.numel() for p in net.parameters()),
            "input": [channels, *shape], "batch": batch, "mode": mode, "device": dev.type,
            "precision": prec.name, "channels_last": channels_last,
            "warmup_s": times[:warmup], "step_s": times[warmup:], "median_step_s": step,
            "patches_per_s": batch / step if steps else float("nan"),
            "rss_before_mb": round(rss_before), "peak_rss_mb": round(peak_rss_mb()),
            "peak_cuda_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20) if dev.type == "cuda" else None,
            "threads": torch.get_num_threads()}


def load_stage(recipe: str, stage: str, profile: str = "paper"):
    from kitseg.recipes import load_recipe

    return load_recipe(recipe, profile=profile).stage(stage)


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    stage = load_stage(args.worker_recipe, args.worker_stage, args.profile)
    batch = args.batch or stage.batch_size
    res = time_train_steps(stage, batch, args.warmup, args.steps, args.device, args.worker_mode)
    res.update(recipe=args.worker_recipe, stage=args.worker_stage, recipe_batch=stage.batch_size, profile=args.profile,
               patch=list(stage.patch_size) if stage.patch_size else None)
    return res


def table(rows: list[dict], cuda: bool) -> str:
    head = ["recipe", "profile", "stage", "network (parameters)", "input C x patch", "batch (recipe's)", "mode",
            "warm-up s", "s / step", "patches / s", "x fp32", "peak RSS MB (before the step)"]
    base = {(r["recipe"], r.get("profile", "paper"), r["stage"], r.get("channels_last", False)): r["median_step_s"]
            for r in rows if r.get("precision", "fp32") == "fp32"}
    if cuda:
        head.append("peak CUDA MB")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ref = base.get((r["recipe"], r.get("profile", "paper"), r["stage"], r.get("channels_last", False)))
        cells = [r["recipe"], r.get("profile", "paper"), r["stage"], f"{r['network']} ({r['params'] / 1e6:.1f} M)",
                 f"{r['input'][0]} x {'x'.join(map(str, r['input'][1:]))}", f"{r['batch']} ({r['recipe_batch']})",
                 MODES.get(r["mode"], r["mode"]),
                 " / ".join(f"{t:.2f}" for t in r["warmup_s"]) or "-",
                 f"{r['median_step_s']:.3f}" if r["median_step_s"] < 10 else f"{r['median_step_s']:.1f}",
                 f"{r['patches_per_s']:.3f}" if r["patches_per_s"] < 10 else f"{r['patches_per_s']:.1f}",
                 f"{ref / r['median_step_s']:.2f}" if ref else "-",
                 f"{r['peak_rss_mb']} ({r['rss_before_mb']})"]
        if cuda:
            cells.append(str(r["peak_cuda_mb"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


GPU_TITLE = "Training throughput on a GPU"
NO_GPU = ("**No GPU figure exists yet** (no GPU was available to this benchmark so far). On a machine with CUDA, "
          "`python bench/bench_throughput.py --device cuda` measures every stage at the recipe's batch size in fp32, "
          "AMP and AMP + channels_last_3d, with peak CUDA memory, and replaces this paragraph with its table.")


def markdown(part: dict | None, cuda: bool) -> str:
    """The CPU section (``throughput``) or the GPU one (``throughput-gpu``; a note when ``part`` is None)."""
    title = GPU_TITLE if cuda else TITLE
    out = [f"{'###' if cuda else '##'} {title}", ""]
    if part is None:
        return "\n".join([*out, NO_GPU])
    m = part["machine"]
    out += [f"{part['date']}; {_common.machine_line(m, part['threads'])}", f"Command: `{part['command']}`", "",
            f"Each row: a fresh process, {part['warmup']} warm-up step(s) then {part['steps']} timed step(s) "
            f"(median), batch {part['batch_note']}; a step = forward, the recipe's loss (deep supervision "
            "included), backward and the recipe's optimizer step, on random data of the stage's patch size (the "
            "whole-volume shape for TuNet's L-Net); input = channels x patch (2D networks: their context slices as "
            "channels)" + (" (the recipes' `--tiny` networks: a check, not paper-size figures)" if part.get("tiny")
                           else "") + ".", "", table(part["rows"], cuda), ""]
    rows3d = [r for r in part["rows"] if len(r["input"]) == 4 and r.get("profile", "paper") == "paper"
              and r.get("precision", "fp32") == "fp32" and not r.get("channels_last")]
    if not cuda and rows3d and not part.get("tiny"):
        per = {(r["recipe"], r["stage"]): r["median_step_s"] / r["batch"] for r in rows3d}
        fast, slow = min(per, key=per.get), max(per, key=per.get)
        days = schedule_days(rows3d)
        out.append(f"Reading: on {m['cores']} CPU cores in fp32 one paper-size 3D training patch takes {per[fast]:.1f}-"
                   f"{per[slow]:.0f} s ({' '.join(fast)} to {' '.join(slow)}); a recipe's whole schedule (epochs x "
                   "iterations x batch patches, every stage, one fold) would take "
                   + ", ".join(f"{name} {d:,.0f} days" for name, d in sorted(days.items(), key=lambda kv: kv[1]))
                   + " here: paper-size training needs a GPU, and a CPU trains the `cpu` profiles (as the "
                   "accuracy benchmark does)." + _bf16_reading(part["rows"]))
    return "\n".join(out).rstrip()


def _bf16_reading(rows: list[dict]) -> str:
    """bf16's speed-up over fp32 per profile: the range over the stages, and the stages under 2x."""
    fp32 = {(r["recipe"], r.get("profile", "paper"), r["stage"]): r["median_step_s"] for r in rows
            if r.get("precision", "fp32") == "fp32" and not r.get("channels_last")}
    out = []
    for profile in ("paper", "cpu"):
        ratio = {(r["recipe"], r["stage"]): fp32[(r["recipe"], profile, r["stage"])] / r["median_step_s"]
                 for r in rows if r.get("precision") == "bf16" and not r.get("channels_last")
                 and r.get("profile", "paper") == profile and (r["recipe"], profile, r["stage"]) in fp32}
        if ratio:
            low = [f"{' '.join(k)} {v:.1f}x" for k, v in ratio.items() if v < 2.0]
            out.append(f"{profile} size {min(ratio.values()):.1f}-{max(ratio.values()):.1f}x over "
                       f"{len(ratio)} stages" + (f" (under 2x: {', '.join(low)})" if low else ""))
    return (" bf16 autocast against fp32, the same stage: " + "; ".join(out) + ". One timed step per mode after "
            "one warm-up, so a single row can be off by the machine's noise.") if out else ""


def schedule_days(rows: list[dict]) -> dict[str, float]:
    """Days one fold of each recipe's full schedule would take at the measured seconds per patch."""
    from kitseg.recipes import load_recipe

    out: dict[str, float] = {}
    for r in rows:
        stage = load_recipe(r["recipe"]).stage(r["stage"])
        patches = stage.epochs * stage.iterations_per_epoch * stage.batch_size
        out[r["recipe"]] = out.get(r["recipe"], 0.0) + patches * r["median_step_s"] / r["batch"] / 86400
    return out


def headlines(part: dict, cuda: bool) -> list[tuple[str, str]]:
    by = {(r["recipe"], r["stage"], r["mode"]): r for r in part["rows"] if r.get("profile", "paper") == "paper"}
    cells, batches = [], set()
    for mode in MODES if cuda else ["fp32", "bf16"]:
        for s in ("localize", "segment"):
            r = by.get(("kitseg_cascade", s, mode))
            if r:
                batches.add(r["batch"])
                cells.append(f"{s} {MODES[mode]} {r['median_step_s']:.3g} s per step "
                             f"({r['patches_per_s']:.3g} patches/s)")
    if not cells:
        return []
    where = part["machine"].get("gpu") if cuda else f"{part['machine']['cores']} CPU cores"
    batch = f"batch {batches.pop()}" if len(batches) == 1 else "the recipe's batch sizes"
    return [(f"training step of the default recipe's paper-size networks, {where}, {batch}", ", ".join(cells))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", help="recipes to measure (default: every recipe)")
    ap.add_argument("--stages", nargs="+", help="only these stage names")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when a GPU is visible, else cpu")
    ap.add_argument("--batch", type=int, help="batch size (default: 1 on the CPU, the recipe's on CUDA)")
    ap.add_argument("--warmup", type=int, help="untimed warm-up steps (default: 1 on the CPU, 3 on CUDA)")
    ap.add_argument("--steps", type=int, help="timed steps (default: 1 on the CPU, 10 on CUDA)")
    ap.add_argument("--modes", nargs="+", choices=(*MODES, *ALIASES),
                    help="precision (+ _cl: channels_last) modes; default on CUDA all six, on the CPU fp32 and bf16")
    ap.add_argument("--profiles", nargs="+", choices=("paper", "cpu", "tiny"), default=None,
                    help="recipe profiles to measure (default: paper and cpu; a recipe without a cpu section is "
                    "measured at paper size only)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--tiny", action="store_true", help="the recipes' tiny profile only (same as --profiles tiny)")
    ap.add_argument("--no-update", action="store_true", help="do not rewrite the section of BENCHMARKS.md")
    ap.add_argument("--quick", action="store_true", help="--tiny, batch 1, 1 + 1 steps; implies --no-update")
    ap.add_argument("--report", action="store_true", help="only rewrite the section from the last results of "
                    "--device (bench/results/throughput-<device>.json)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-recipe", help=argparse.SUPPRESS)
    ap.add_argument("--worker-stage", help=argparse.SUPPRESS)
    ap.add_argument("--worker-mode", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--profile", default="paper", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _common.worker_exit(worker(args))
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device == "cuda"
    if args.report:
        part = _common.read_json(f"{NAME}-{args.device}")
        if not part:
            raise SystemExit(f"no bench/results/{NAME}-{args.device}.json yet: run the benchmark first")
        update_sections(part, cuda)
        return
    if args.quick:
        args.tiny, args.no_update, args.batch, args.warmup, args.steps = True, True, args.batch or 1, 1, 1
    args.warmup = (3 if cuda else 1) if args.warmup is None else args.warmup
    args.steps = (10 if cuda else 1) if args.steps is None else args.steps
    args.batch = args.batch or (None if cuda else 1)
    modes = [{"amp": "auto", "amp_cl": "auto_cl"}.get(m, m) for m in (args.modes or
                                                                     (list(MODES) if cuda else ["fp32", "bf16"]))]
    if not cuda and any(m.startswith("fp16") for m in modes):
        raise SystemExit("fp16 autocast is measured on CUDA only (on the CPU: fp32 and bf16)")
    profiles = ["tiny"] if args.tiny else (args.profiles or ["paper", "cpu"])
    args.tiny = profiles == ["tiny"]

    from kitseg.recipes import list_recipes, load_recipe

    recipes = args.recipes or list_recipes()
    info = _common.machine(gpu=cuda)
    rows = []
    for name in recipes:
        for profile in profiles:
            if profile == "cpu" and not load_recipe(name).cpu:
                continue
            for stage in load_recipe(name, profile=profile).stages:
                if args.stages and stage.name not in args.stages:
                    continue
                for mode in modes:  # interleaved: the modes of one stage run back to back
                    extra = ["--batch", str(args.batch)] if args.batch else []
                    r = _common.spawn(__file__, ["--worker", "--worker-recipe", name, "--worker-stage", stage.name,
                                                 "--worker-mode", mode, "--profile", profile, "--device",
                                                 args.device, "--warmup", str(args.warmup), "--steps",
                                                 str(args.steps), *extra], args.threads,
                                      f"{name}/{profile}/{stage.name}/{mode}")
                    r["profile"] = profile
                    rows.append(r)
                    print(f"{name} ({profile}) {stage.name} {r['mode']}: {r['median_step_s']:.3f} s/step (batch "
                          f"{r['batch']}), {r['patches_per_s']:.3f} patches/s, peak RSS {r['peak_rss_mb']} MB"
                          + (f", peak CUDA {r['peak_cuda_mb']} MB" if cuda else ""), flush=True)
    part = {"date": _common.now(), "machine": info, "threads": args.threads, "warmup": args.warmup,
            "steps": args.steps, "tiny": args.tiny, "rows": rows,
            "batch_note": f"{args.batch} (the recipe's in brackets)" if args.batch else "the recipe's",
            "command": _common.command("bench_throughput.py")}
    print(markdown(part, cuda))
    _common.write_json(f"{NAME}-{args.device}" + ("-check" if args.no_update else ""), part)
    if not args.no_update:
        update_sections(part, cuda)


def update_sections(part: dict, cuda: bool) -> None:
    """Rewrite this device's section (and, after a CPU run, add the GPU section's note while it has none)."""
    _common.update_markdown(f"{NAME}-gpu" if cuda else NAME, markdown(part, cuda), headlines(part, cuda))
    if not cuda and _common.markers(f"{NAME}-gpu")[0] not in _common.MD.read_text(encoding="utf-8"):
        _common.update_markdown(f"{NAME}-gpu", markdown(None, True),
                                [("training throughput on a GPU (fp32 / bf16 / fp16, channels_last_3d on/off)",
                                  "no GPU figure yet: `python bench/bench_throughput.py --device cuda`")])


if __name__ == "__main__":
    main()
