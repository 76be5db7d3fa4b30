"""A training run killed with SIGKILL and resumed ends with the weights of an uninterrupted run."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time

import pytest
import torch

from kitseg.cli.main import main
from kitseg.stages.checkpoint import load_checkpoint
from synthetic_kits import make_kits_dataset, write_tiny_recipe


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the same as in the killed process: the same arithmetic
    yield
    torch.set_num_threads(before)


def _train_in_child(argv: list[str]) -> None:
    """`kitseg train ...` in a forked process (torch and kitseg already imported: no start-up cost)."""
    torch.set_num_threads(1)
    sys.exit(main(argv))


def _last_epoch(path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except Exception:  # not there yet
        return 0


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    data = make_kits_dataset(tmp_path / "data", n=4)
    recipe = write_tiny_recipe(tmp_path / "tiny.yaml")
    epochs = 4

    def args(run):
        return ["train", "--recipe", str(recipe), "--data", str(data), "-o", str(run), "--stage", "localize",
                "--epochs", str(epochs), "--set", "stages.localize.iterations_per_epoch=3", "--n-splits", "2",
                "--seed", "5", "--no-progress"]

    # the uninterrupted run first (it also warms this process up, so the forked run starts at once)
    straight = tmp_path / "straight"
    assert main(args(straight)) == 0
    ref = load_checkpoint(straight / "localize" / "fold_0" / "checkpoint_last.pt")

    killed = tmp_path / "killed"
    ckpt = killed / "localize" / "fold_0" / "checkpoint_last.pt"
    proc = multiprocessing.get_context("fork").Process(target=_train_in_child, args=(args(killed),))
    proc.start()
    try:
        deadline = time.monotonic() + 240
        while _last_epoch(ckpt) < 1:
            if not proc.is_alive():
                pytest.fail(f"training ended (exit code {proc.exitcode}) before it could be killed")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint after 240 s")
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
    at_kill = load_checkpoint(ckpt)["epoch"]
    assert 1 <= at_kill < epochs, "the kill came too late to test anything"
    assert proc.exitcode == -signal.SIGKILL

    assert main([*args(killed), "--resume"]) == 0
    resumed = load_checkpoint(ckpt)
    assert resumed["epoch"] == epochs and resumed["finished"]
    assert not list(ckpt.parent.glob(".*.part*"))

    assert all(torch.equal(ref["model"][k], resumed["model"][k]) for k in ref["model"])
    assert [r["val_loss"] for r in ref["history"]] == [r["val_loss"] for r in resumed["history"]]
