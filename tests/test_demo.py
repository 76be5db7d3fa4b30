"""`kitseg demo` end to end at the smallest size: every step runs and the figures and paths are printed.

The demo's accuracy goal (kidney Dice >= 0.85 on held-out cases at its default size, in minutes)
is checked by running `make demo`; this test checks the wiring in CI time, with a coarse stage 2.
"""

from __future__ import annotations

import csv

from kitseg.cli.main import main

QUICK = ["--set", "stages.segment.preprocess.target_spacing=[6.0,6.0,6.0]", "--set",
         "stages.segment.iterations_per_epoch=4", "--set", "stages.localize.iterations_per_epoch=4"]


def test_demo_runs_every_step_prints_the_dice_and_continues(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "-o", str(out), "--train-cases", "5", "--test-cases", "2", "--epochs", "1", "--size", "tiny",
            "--no-progress", *QUICK]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((out / "evaluation" / "metrics.csv").open(encoding="utf-8")))
    assert [row["case_id"] for row in rows] == ["case_00000", "case_00001"]
    kidney = sum(float(row["kits19_kidney_dice"]) for row in rows) / 2
    assert f"kidney Dice {kidney:.3f}" in printed
    assert str(out / "report" / "index.html") in printed and "case_00001" in (out / "report" / "index.html").read_text(
        encoding="utf-8")
    best = out / "run" / "segment" / "fold_0" / "checkpoint_best.pt"
    stamp = best.stat().st_mtime_ns
    assert main(args) == 0  # a second run continues: nothing is trained or predicted again
    assert f"kidney Dice {kidney:.3f}" in capsys.readouterr().out
    assert best.stat().st_mtime_ns == stamp
