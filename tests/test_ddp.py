"""Data-parallel training: 2 processes with the gloo backend on the CPU, as torchrun would launch them.

The ranks are forked from the test process (which has already imported torch and kitseg), as
torch's DataLoader forks its workers; a spawn would spend most of the test importing.
"""

from __future__ import annotations

import os
import socket

import torch
import torch._inductor.config  # noqa: F401  (torch.use_deterministic_algorithms imports it)
import torch.multiprocessing as mp

import kitseg.nets  # noqa: F401  (imported before the fork, so that the ranks start warm)
import kitseg.preprocessing.cache  # noqa: F401
from kitseg.recipes import load_recipe
from kitseg.stages.checkpoint import load_checkpoint
from kitseg.training.distributed import cleanup, init_distributed
from kitseg.training.loop import TrainOptions
from kitseg.training.train_recipe import train_recipe
from synthetic_kits import make_kits_dataset, write_tiny_recipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, data, recipe, run, out) -> None:
    # what torchrun sets for each process
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    assert info.world_size == world and info.rank == rank
    try:
        rec = load_recipe(recipe, {"stages.segment.batch_size": 1})
        results = train_recipe(rec, data, run, folds=0, stages=["segment"], n_splits=2,
                               options=TrainOptions(seed=3, progress=False, dist=info))
        torch.save(results[0].model.state_dict(), out / f"rank{rank}.pt")
    finally:
        cleanup(info)


def test_two_process_gloo_run_keeps_identical_weights(tmp_path):
    data = make_kits_dataset(tmp_path / "data", n=4)
    recipe = write_tiny_recipe(tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    mp.start_processes(_rank, args=(2, _free_port(), data, recipe, run, tmp_path), nprocs=2, join=True,
                       start_method="fork")
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    ck = load_checkpoint(run / "segment" / "fold_0" / "checkpoint_last.pt")  # written by rank 0 only
    assert ck["finished"] and ck["epoch"] == 2
    assert all(torch.equal(ck["model"][k], w0[k]) for k in w0)
    init = load_checkpoint(run / "segment" / "fold_0" / "checkpoint_best.pt")
    assert any(not torch.equal(init["model"][k], w0[k]) for k in w0) or init["epoch"] == 2  # it trained
    assert (run / "splits.json").is_file() and (run / "cache" / "segment" / "index.json").is_file()
