"""Checkpoints: written atomically every epoch, loadable with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict::

    {"format": "kitseg-checkpoint", "version": 1,
     "network": {"name", "in_channels", "out_channels", "params"},
     "stage": name, "stage_spec": Stage as JSON, "fold": k, "epoch": e (epochs completed),
     "model": state_dict, "optimizer", "scheduler", "scaler", "early_stopping", "sampler",
     "rng": {"python": JSON text, "torch": ByteTensor, "cuda": [ByteTensor]}, "history": [rows], ...}

RNG states and the sampler's numpy state are stored as tensors and JSON text so that
``weights_only=True`` loading (no arbitrary pickles) restores everything needed to resume exactly.
``load_stage_models`` is what inference calls.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch
from torch import nn

from kitseg._atomic import atomic_path
from kitseg.errors import KitsegError

FORMAT = "kitseg-checkpoint"
VERSION = 1
LAST, BEST = "checkpoint_last.pt", "checkpoint_best.pt"


def rng_state() -> dict:
    """The python and torch (CPU and CUDA) RNG states, in weights_only-loadable types."""
    version, internal, gauss = random.getstate()
    return {"python": json.dumps([version, list(internal), gauss]),
            "torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: str | Path, ckpt: dict) -> None:
    """Write ``ckpt`` under ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            try:
                torch.save(ckpt, fh)
            except RuntimeError as exc:  # torch's zip writer turns a failed write (disk full, size limit) into this
                raise KitsegError(f"could not be written (disk full or file-size limit?): {str(exc).splitlines()[0]}",
                                  path) from None
            fh.flush()
            os.fsync(fh.fileno())


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """Load and check a kitseg checkpoint (weights_only: no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise KitsegError("no such checkpoint", path)
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # corrupt, truncated or foreign file
        raise KitsegError(f"not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                          path) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise KitsegError("not a kitseg checkpoint (no 'format': 'kitseg-checkpoint')", path)
    if int(ckpt.get("version", 0)) > VERSION:
        raise KitsegError(f"checkpoint version {ckpt['version']} is newer than this kitseg ({VERSION}); upgrade",
                          path)
    return ckpt


def build_model(ckpt: dict, device: str | torch.device = "cpu") -> nn.Module:
    """The checkpoint's network with its weights, in eval mode, on ``device``."""
    from kitseg.nets import build_network  # nets pull in MONAI layers: import on use

    net = ckpt["network"]
    model = build_network(net["name"], net["in_channels"], net["out_channels"], **dict(net["params"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise KitsegError(f"checkpoint weights do not fit network {net['name']!r}: {str(exc).splitlines()[0]}") \
            from None
    return model.to(device).eval()


def network_record(stage) -> dict:
    """A checkpoint's ``"network"`` entry for a recipe ``Stage``: what ``build_model`` rebuilds."""
    return {"name": stage.network.name, "in_channels": stage.in_channels,
            "out_channels": stage.target.out_channels, "params": stage.network_params}


def fold_dir(run_dir: str | Path, stage_name: str, fold: int, member: int = 0) -> Path:
    """Where a (stage, fold) trains: ``<stage>/fold_<k>``; ensemble member m >= 1 (``kitseg train --ensemble``,
    another seed) in ``<stage>/fold_<k>/member_<m>``."""
    base = Path(run_dir) / stage_name / f"fold_{fold}"
    return base if member == 0 else base / f"member_{member}"


def _members(fold_path: Path, name: str) -> list[Path]:
    """The checkpoint ``name`` of a fold folder's ensemble members 1, 2, ... (member 0 is the fold's own)."""
    found = [(int(d.name.split("_", 1)[1]), d / name) for d in fold_path.glob("member_*")
             if d.name.split("_", 1)[1].isdigit() and (d / name).is_file()]
    return [p for _, p in sorted(found)]


def checkpoint_paths(run_dir: str | Path, stage_name: str, folds: list[int] | None = None,
                     which: str = "best") -> list[tuple[int, Path]]:
    """(fold, path) of the stage's checkpoints, every ensemble member of each fold: ``folds=None`` means
    every fold that has one."""
    if which not in ("best", "last"):
        raise KitsegError(f"which must be 'best' or 'last', got {which!r}")
    name = BEST if which == "best" else LAST
    stage_dir = Path(run_dir) / stage_name
    if folds is None:
        folds = sorted(int(d.name.split("_", 1)[1]) for d in stage_dir.glob("fold_*")
                       if d.name.split("_", 1)[1].isdigit() and (d / name).is_file())
        if not folds:
            raise KitsegError(f"no trained fold of stage {stage_name!r} (no */{name}); run kitseg train first",
                              stage_dir)
    out = []
    for f in folds:
        p = fold_dir(run_dir, stage_name, f) / name
        if not p.is_file():
            raise KitsegError(f"fold {f} of stage {stage_name!r} has no {name}", p.parent)
        out += [(f, p)] + [(f, m) for m in _members(p.parent, name)]
    return out


def load_stage_models(run_dir: str | Path, stage_name: str, folds: list[int] | None = None, which: str = "best",
                      device: str | torch.device = "cpu") -> list[nn.Module]:
    """The trained networks of one stage (one per fold: an ensemble), in eval mode on ``device``."""
    models = []
    for _, path in checkpoint_paths(run_dir, stage_name, folds, which):
        ckpt = load_checkpoint(path, "cpu")
        if ckpt.get("stage") != stage_name:
            raise KitsegError(f"checkpoint belongs to stage {ckpt.get('stage')!r}, not {stage_name!r}", path)
        models.append(build_model(ckpt, device))
    return models
