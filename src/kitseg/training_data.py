"""What a model was trained on: the data folder, its cases, synthetic or real CT.

``kitseg train`` writes ``RUN_DIR/training_data.json`` (``describe_folder`` of its ``--data`` folder);
``kitseg export`` puts the same record into the model card; ``load_run`` exposes it as
``LoadedRun.training_data``, and ``kitseg predict`` prints ``synthetic_warning`` (one line) when the
model saw only synthetic CT. A folder is synthetic when it holds the ``synth.json`` that ``kitseg synth``
writes beside its cases; that file also says which renderer version made the images.

Run folders from before ``training_data.json`` existed are described from their preprocessing caches
(``cache/<stage>/cache.json`` names the data folder) and ``splits.json`` (``from_run``).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from kitseg._atomic import write_json

FILE = "training_data.json"
SCHEMA_VERSION = 1
SYNTH_FILE = "synth.json"  # what kitseg synth writes beside its cases

SYNTHETIC = "synthetic (kitseg synth)"
REAL = "real CT (the training folder has no synth.json from kitseg synth)"
NO_CACHE = "unknown (the run folder has no cache to say where its data came from)"
NOT_HERE = "unknown (the training folder is not on this machine)"


class TrainingData(BaseModel):
    """``training_data.json`` and the model card's ``training_data``."""

    model_config = ConfigDict(extra="ignore")
    schema_version: int = SCHEMA_VERSION
    dataset: str | None = None  # the dataset's name (its label set)
    folder: str | None = None
    kind: str = NO_CACHE  # one of the sentences above
    synthetic: bool | None = None  # None: not known
    renderer_version: int | None = None  # synthetic: kitseg.synth RENDERER_VERSION that made the images
    labelled_cases: int | None = None
    folds: int | None = None

    @model_validator(mode="after")
    def _kind_says_synthetic(self):  # model cards written before the field existed
        if self.synthetic is None and not self.kind.startswith("unknown"):
            self.synthetic = self.kind.startswith("synthetic")
        return self


def _renderer_version(synth_json: Path) -> int | None:
    try:
        raw = json.loads(synth_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    if raw.get("renderer_version") is not None:
        return int(raw["renderer_version"])
    return 1 if "cases" in raw else None  # a synth.json from before versions were recorded: the first renderer


def describe_folder(folder: str | Path | None, dataset: str | None = None, labelled_cases: int | None = None,
                    folds: int | None = None) -> TrainingData:
    """The record of training on the data in ``folder`` (None: not known)."""
    if folder is None:
        return TrainingData(dataset=dataset, labelled_cases=labelled_cases, folds=folds)
    root = Path(folder)
    if (root / SYNTH_FILE).is_file():
        kind, synthetic, version = SYNTHETIC, True, _renderer_version(root / SYNTH_FILE)
    elif root.is_dir():
        kind, synthetic, version = REAL, False, None
    else:
        kind, synthetic, version = NOT_HERE, None, None
    return TrainingData(dataset=dataset, folder=str(folder), kind=kind, synthetic=synthetic,
                        renderer_version=version, labelled_cases=labelled_cases, folds=folds)


def write(run_dir: str | Path, data: TrainingData) -> Path:
    path = Path(run_dir) / FILE
    write_json(path, data.model_dump(mode="json"))
    return path


def from_run(run_dir: str | Path, dataset: str | None = None) -> TrainingData:
    """The run folder's ``training_data.json``; for an older run, what its caches and splits say."""
    run_dir = Path(run_dir)
    path = run_dir / FILE
    if path.is_file():
        try:
            return TrainingData.model_validate_json(path.read_text(encoding="utf-8"))
        except ValueError:
            pass  # damaged: describe it from the other files
    roots = set()
    for info in sorted((run_dir / "cache").glob("*/cache.json")):
        try:
            roots.add(json.loads(info.read_text(encoding="utf-8"))["dataset_root"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    out = describe_folder(sorted(roots)[0] if roots else None, dataset)
    splits = run_dir / "splits.json"
    if splits.is_file():
        try:
            folds = json.loads(splits.read_text(encoding="utf-8"))["folds"]
            out.labelled_cases = len({c for f in folds for c in f["train"] + f["val"]})
            out.folds = len(folds)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return out


def synthetic_warning(data: TrainingData | None) -> str | None:
    """One line for the terminal when the model was trained only on synthetic CT, else None."""
    if data is None or not data.synthetic:
        return None
    made = "kitseg synth" + (f", renderer version {data.renderer_version}" if data.renderer_version else "")
    cases = f"{data.labelled_cases} cases" if data.labelled_cases else "its cases"
    return (f"warning: this model was trained only on synthetic CT ({cases} made by {made}); "
            "its accuracy on real CT is unknown")


__all__ = ["FILE", "TrainingData", "describe_folder", "from_run", "synthetic_warning", "write"]
