"""`kitseg demo`: the whole pipeline on data it makes itself, in minutes on a laptop CPU.

1. make a small synthetic KiTS19-layout dataset (training cases) and held-out test cases with
   another seed (``kitseg.synth``);
2. train a tiny version of the default cascade (``kitseg.training``), fold 0;
3. predict the held-out cases (``kitseg.inference``);
4. evaluate them with the KiTS19 metrics (``kitseg.metrics``) and write the report (``kitseg.report``).
Every step writes plain files under the output folder, the same files the individual commands write.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from kitseg.recipes import DEFAULT_RECIPE, load_recipe


@dataclass
class DemoResult:
    out_dir: Path
    kidney_dice: float
    tumor_dice: float
    composite: float
    report: Path
    seconds: float


def run_demo(out_dir: str | Path = "kitseg_demo", *, train_cases: int = 16, test_cases: int = 4, seed: int = 0,
             size: str = "small", epochs: int | None = None, recipe: str = DEFAULT_RECIPE, device: str = "cpu",
             overrides: list[str] = (), progress: bool = True, console: Console | None = None) -> DemoResult:
    """Run synth -> train (tiny recipe, then ``overrides`` as ``kitseg train --set``) -> predict ->
    evaluate -> report under ``out_dir``."""
    from kitseg.inference import load_run
    from kitseg.inference.folder import predict_folder
    from kitseg.metrics import evaluate_folder
    from kitseg.report import make_report
    from kitseg.synth import make_dataset
    from kitseg.training.loop import TrainOptions
    from kitseg.training.train_recipe import train_recipe

    console = console or Console(stderr=True)
    out = Path(out_dir)
    t0 = time.perf_counter()
    data, test, run_dir = out / "data", out / "test", out / "run"
    preds, evaluation, report = out / "predictions", out / "evaluation", out / "report"

    console.rule(f"[bold]1/5 synthetic CT: {train_cases} training + {test_cases} held-out cases ({size})")
    make_dataset(data, cases=train_cases, seed=seed, size=size, progress=progress)
    make_dataset(test, cases=test_cases, seed=seed + 10_000, size=size, progress=progress)

    console.rule(f"[bold]2/5 training the tiny {recipe} recipe")
    rec = load_recipe(recipe, list(overrides), tiny=True)
    options = TrainOptions(seed=seed, device=device, epochs=epochs, resume=(run_dir / "recipe.json").exists(),
                           progress=progress)
    train_recipe(rec, data, run_dir, folds=0, options=options)

    console.rule("[bold]3/5 predicting the held-out cases")
    predict_folder(test, preds, load_run(run_dir, device=device), device=device, progress=progress)

    console.rule("[bold]4/5 evaluating (KiTS19 metrics)")
    summary = evaluate_folder(preds, test, evaluation, progress=progress)

    console.rule("[bold]5/5 writing the report")
    page = make_report(preds, test, report, gt_dir=test, title="kitseg demo: held-out synthetic cases",
                       progress=progress)
    mean = summary.mean
    return DemoResult(out, float(mean["kits19_kidney_dice"]), float(mean["kits19_tumor_dice"]),
                      float(mean["kits19_composite"]), page, time.perf_counter() - t0)
