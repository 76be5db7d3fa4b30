"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node 4 [--nnodes 2 --node_rank 0 --rdzv_endpoint host:29500] -m kitseg.cli.main
train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; ``init_distributed`` reads them and joins the
group (NCCL on CUDA, gloo on CPU). Without them training runs in one process.

How the work is shared: every rank holds the same sampler with the same seed and draws the whole
global batch (world_size x batch_size items); rank r keeps items r, r + world, ... (``shard``).
The draws of a run are therefore the same for any number of ranks, the sampler state is the same
on every rank (rank 0 saves it), and DistributedDataParallel averages the gradients. Only rank 0
writes files; the others wait at ``barrier``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from kitseg.errors import KitsegError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device: str, timeout_min: float = 120.0) -> DistInfo:
    """Join the process group that torchrun set up (or return the single-process info).

    The generous timeout covers rank 0 preprocessing the dataset while the others wait.
    """
    if not launched_by_torchrun():
        return SINGLE
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        if torch.cuda.device_count() <= info.local_rank:
            raise KitsegError(f"rank {info.rank} wants GPU {info.local_rank}, but this node has "
                              f"{torch.cuda.device_count()}; use --nproc_per_node <= the GPU count")
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_min))
    return info


def device_for(device: str, info: DistInfo) -> torch.device:
    """The torch device of this rank: ``cuda`` becomes ``cuda:<local rank>``."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise KitsegError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu")
        return torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return torch.device(device)


def shard(items: list, info: DistInfo) -> list:
    """This rank's share of a global batch: items rank, rank + world, ..."""
    return items[info.rank :: info.world_size]


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. an error or a decision to stop early)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: Any, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (validation counts); a no-op in one process."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def check_replicas(model: torch.nn.Module, info: DistInfo) -> None:
    """Raise if the ranks' copies of the model differ (they must be identical after DDP training)."""
    if not info.enabled:
        return
    with torch.no_grad():
        flat = [t.detach().double().flatten().cpu() for t in model.state_dict().values() if t.is_floating_point()]
        flat_all = torch.cat(flat) if flat else torch.zeros(1, dtype=torch.float64)
        fingerprint = (float(flat_all.sum()), float((flat_all * torch.arange(len(flat_all))).sum()))
    every = all_gather_objects(fingerprint, info)
    if any(f != every[0] for f in every):
        raise KitsegError(f"the ranks' model weights differ after training ({every}); this is a bug, please report it")
