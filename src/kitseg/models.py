"""Shareable model files: one ``model.kitseg`` holding everything ``kitseg predict`` needs from a run.

``export(run_dir, "model.kitseg")`` writes a zip (``kitseg.stages.model_file`` describes the
members and the checks on reading) with the recipe, fingerprint, label convention, the chosen folds'
weights as safetensors and a model card; ``load("model.kitseg")`` returns the ``LoadedRun`` that
``kitseg.inference.predict`` takes (``kitseg predict --model model.kitseg`` does this). The labels
predicted from the file are bit-identical to those from the run folder: the weights are the
checkpoints' float32 tensors, unchanged.

The model card (``model_card.json``, printed by ``kitseg info model.kitseg``) says what the model is
and what it was trained on: recipe and stages, label set, the training data (dataset name and
folder, synthetic or real, number of labelled cases and of folds), each member's validation figures
(best smoothed validation Dice and its epoch, epochs trained, per-class Dice at that epoch) and the
kitseg version.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import zipfile
from pathlib import Path

import torch

from kitseg import __version__
from kitseg._atomic import atomic_path
from kitseg.errors import KitsegError
from kitseg.stages.model_file import FORMAT, FORMAT_VERSION, MANIFEST, SUFFIX, load_model, read_model_card, sha256
from kitseg.training_data import from_run

load = load_model


def _training_data(run_dir: Path, fingerprint: dict | None) -> dict:
    """The run's training data (``kitseg.training_data``): folder, synthetic or real, cases and folds."""
    data = from_run(run_dir, fingerprint.get("dataset") if fingerprint else None)
    if data.labelled_cases is None and fingerprint:
        data.labelled_cases = fingerprint.get("n_cases")
    return data.model_dump(mode="json")


def _member_card(ck: dict) -> dict:
    best_epoch = int(ck.get("best_epoch", ck.get("epoch", 0)))
    row = next((r for r in ck.get("history", []) if r.get("epoch") == best_epoch), None)
    card = {"fold": int(ck.get("fold", 0)), "epochs_trained": int(ck.get("epoch", 0)),
            "epochs_planned": ck.get("epochs"), "finished": ck.get("finished"),
            "best_smoothed_val_dice": ck.get("best_ema_dice"), "best_epoch": best_epoch,
            "precision": ck.get("precision", "fp32")}
    if row is not None:
        card["val_dice_at_best_epoch"] = {k[5:]: v for k, v in row.items() if k.startswith("dice_")}
    return {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in card.items()}


def export(run_dir: str | Path, output: str | Path, *, folds: list[int] | None = None, which: str = "best",
           note: str = "") -> Path:
    """Write the run folder's model (``folds``: default every trained fold) to ``output`` (a .kitseg zip)."""
    from safetensors.torch import save

    from kitseg.stages.checkpoint import checkpoint_paths, load_checkpoint
    from kitseg.stages.run_folder import load_run

    run_dir, output = Path(run_dir), Path(output)
    if not output.name.lower().endswith(SUFFIX):
        raise KitsegError(f"a model file name ends in {SUFFIX}", output)
    run = load_run(run_dir, "cpu", folds, which)  # checks the run: recipe, label set, every stage has weights
    files: dict[str, bytes] = {}

    def add_json(name: str, obj) -> None:
        files[name] = (json.dumps(obj, indent=2) + "\n").encode("utf-8")

    add_json("recipe.json", run.recipe.model_dump(mode="json"))
    add_json("dataset.json", run.dataset.model_dump(mode="json"))
    fingerprint = run.fingerprint.model_dump(mode="json") if run.fingerprint is not None else None
    if fingerprint is not None:
        add_json("fingerprint.json", fingerprint)
    stages, cards = {}, {}
    for stage in run.recipe.stages:
        use = which
        if which == "best":
            try:
                checkpoint_paths(run_dir, stage.name, folds, "best")
            except KitsegError:
                use = "last"  # as load_run does
        stages[stage.name], cards[stage.name] = [], []
        seen: dict[int, int] = {}
        for fold, path in checkpoint_paths(run_dir, stage.name, folds, use):
            ck = load_checkpoint(path, "cpu")
            member = seen[fold] = seen.get(fold, -1) + 1  # ensemble members of one fold (kitseg train --ensemble)
            name = f"weights/{stage.name}/fold_{fold}" + (f"_member_{member}" if member else "") + ".safetensors"
            files[name] = save({k: v.detach().cpu().contiguous().clone() for k, v in ck["model"].items()},
                               metadata={"stage": stage.name, "fold": str(fold)})
            stages[stage.name].append({"fold": fold, "epoch": int(ck.get("epoch", 0)), "checkpoint": use,
                                       "network": ck["network"], "weights": name})
            last = path.with_name("checkpoint_last.pt")
            history = load_checkpoint(last, "cpu") if use == "best" and last.is_file() else ck
            cards[stage.name].append(_member_card({**ck, "history": history.get("history", []),
                                                   "epochs": history.get("epochs", ck.get("epochs"))}))
    card = {"name": output.name[: -len(SUFFIX)], "recipe": run.recipe.name, "title": run.recipe.title,
            "paper": run.recipe.paper, "stages": [s.name for s in run.recipe.stages],
            "labels": run.dataset.labels, "label_set": run.dataset.name,
            "training_data": _training_data(run_dir, fingerprint), "validation": cards,
            "kitseg_version": __version__, "exported": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "note": note or None,
            "intended_use": "research; automatic segmentations must be reviewed before any clinical use"}
    add_json("model_card.json", card)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kitseg_version": __version__,
                "recipe": run.recipe.name, "stages": stages, "checksums": {n: sha256(d) for n, d in files.items()}}
    with atomic_path(output, suffix=SUFFIX) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n")
            for name, data in files.items():
                zf.writestr(name, data)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    return output


def _training_line(data: dict) -> str:
    version = f", renderer version {data['renderer_version']}" if data.get("renderer_version") else ""
    parts = [f"{data.get('dataset') or 'a dataset'}: {data.get('kind')}{version}"]
    if data.get("labelled_cases") is not None:
        parts.append(f"{data['labelled_cases']} labelled cases" + (f", {data['folds']} folds" if data.get("folds")
                                                                    else ""))
    if data.get("folder"):
        parts.append(f"folder {data['folder']}")
    return "; ".join(parts)


def describe(path: str | Path) -> str:
    """The model card of a model file as lines for the terminal (``kitseg info model.kitseg``)."""
    card = read_model_card(path)
    data = card.get("training_data", {})
    lines = [f"model file    {path}",
             f"recipe        {card.get('recipe')}: {card.get('title', '')}",
             f"paper         {card.get('paper', '')}",
             f"labels        {card.get('label_set')} {card.get('labels')}",
             f"trained on    {_training_line(data)}",
             f"kitseg        {card.get('kitseg_version')} (exported {card.get('exported')})"]
    for stage, members in card.get("validation", {}).items():
        for m in members:
            dice = m.get("val_dice_at_best_epoch") or {}
            per_class = ", ".join(f"{k} {v:.3f}" for k, v in dice.items() if isinstance(v, (int, float)))
            best = m.get("best_smoothed_val_dice")
            figures = ("no validation figures in its checkpoint" if best is None else
                       f"best smoothed validation Dice {best:.3f} at epoch {m.get('best_epoch')}"
                       + (f" ({per_class})" if per_class else ""))
            lines.append(f"  {stage} fold {m['fold']}: {figures}; {m.get('epochs_trained')} epochs trained")
    if card.get("note"):
        lines.append(f"note          {card['note']}")
    lines.append(f"intended use  {card.get('intended_use')}")
    return "\n".join(lines)


__all__ = ["describe", "export", "load", "load_model"]
