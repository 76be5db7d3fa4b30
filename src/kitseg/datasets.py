"""Datasets: the KiTS19, KiTS21/23 and nnU-Net/MSD layouts, and their typed description.

- KiTS19 layout: ``case_XXXXX/imaging.nii.gz`` (may be absent) + ``case_XXXXX/segmentation.nii.gz``,
  labels 0 background, 1 kidney, 2 tumor.
- KiTS21/23 layout: the same folders, labels 1 kidney, 2 tumor, 3 cyst. A KiTS layout is read as
  KiTS19 unless a ``dataset.json`` beside the cases says otherwise (``kitseg synth --layout kits23``
  writes one).
- nnU-Net/MSD layout: ``dataset.json`` + ``imagesTr/NAME_0000.nii.gz`` + ``labelsTr/NAME.nii.gz``
  (MSD's ``training`` list of image/label pairs is honoured when present).

The description is importable without torch (like TotalSegmentator's task registry).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kitseg.errors import KitsegError
from kitseg.io import check_same_grid, is_image_file, read_label, read_volume
from kitseg.volume import Volume

SCHEMA_VERSION = 1


class DatasetSpec(BaseModel):
    """Labels and evaluation regions of a dataset (the typed part of ``dataset.json``)."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    name: str = "KiTS19"
    labels: dict[str, int] = Field(default_factory=lambda: {"background": 0, "kidney": 1, "tumor": 2})
    regions: dict[str, list[int]] = Field(default_factory=lambda: {"kidney": [1, 2], "tumor": [2]})
    layout: str = "kits"  # "kits" (case_XXXXX folders) or "nnunet"
    file_ending: str = ".nii.gz"

    @property
    def label_values(self) -> set[int]:
        return set(self.labels.values())

    @property
    def max_label(self) -> int:
        return max(self.labels.values())


KITS19 = DatasetSpec()
KITS23 = DatasetSpec(
    name="KiTS23",
    labels={"background": 0, "kidney": 1, "tumor": 2, "cyst": 3},
    regions={"kidney_and_masses": [1, 2, 3], "masses": [2, 3], "tumor": [2]},
)
PRESETS = {"kits19": KITS19, "kits21": KITS23.model_copy(update={"name": "KiTS21"}), "kits23": KITS23}


@dataclass(frozen=True)
class Case:
    """One case of a dataset: its id and the paths of its image and label (either may be None)."""

    case_id: str
    image: Path | None
    label: Path | None

    def load(self, spec: DatasetSpec = KITS19, need_image: bool = True) -> tuple[Volume | None, Volume | None]:
        """Read and validate this case: finite image, labels in the label set, matching grids."""
        if need_image and self.image is None:
            raise KitsegError(f"case {self.case_id} has no image", self.label)
        image = read_volume(self.image) if self.image is not None else None
        label = read_label(self.label, spec.label_values) if self.label is not None else None
        if image is not None and label is not None:
            check_same_grid(image, label, f"case {self.case_id} image and label")
        return image, label


@dataclass(frozen=True)
class Dataset:
    root: Path
    spec: DatasetSpec
    cases: tuple[Case, ...]

    def __len__(self) -> int:
        return len(self.cases)

    def case(self, case_id: str) -> Case:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise KitsegError(f"no case {case_id!r} in this dataset", self.root)


_KITS_CASE = re.compile(r"^case_\d{5}$")


def _safe_child(root: Path, rel: str, what: str) -> Path:
    """Resolve a path named in dataset.json, refusing anything that escapes the dataset folder."""
    try:
        p = (root / rel).resolve()
    except (OSError, ValueError):  # a NUL byte, a symlink loop
        raise KitsegError(f"{what} path {rel!r} is not a usable path", root / "dataset.json") from None
    if Path(rel).is_absolute() or not p.is_relative_to(root.resolve()):
        raise KitsegError(f"{what} path {rel!r} escapes the dataset folder", root / "dataset.json")
    return p


def read_spec(root: Path) -> tuple[DatasetSpec, dict]:
    """Read ``dataset.json`` (ours or nnU-Net's) into a DatasetSpec plus the raw dict."""
    path = root / "dataset.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise KitsegError(f"unreadable dataset.json ({exc})", path) from None
    if not isinstance(raw, dict):
        raise KitsegError("dataset.json must hold a JSON object", path)
    labels = raw.get("labels", KITS19.labels)
    regions = raw.get("regions")
    if not isinstance(labels, dict) or not isinstance(regions, (dict, type(None))):
        raise KitsegError('dataset.json "labels" (and "regions") must be objects, e.g. '
                          '{"labels": {"background": 0, "kidney": 1, "tumor": 2}}', path)
    try:
        if labels and all(str(k).isdigit() for k in labels):  # MSD style {"0": "background", ...}
            labels = {str(v): int(k) for k, v in labels.items()}
        if regions is None:
            # nnU-Net v2 region syntax: {"kidney": [1, 2], ...} inside labels; plain ints are labels.
            regions = {k: list(v) for k, v in labels.items() if isinstance(v, list)}
            labels = {k: v for k, v in labels.items() if not isinstance(v, list)}
            if not regions:
                regions = {k: ([v] if k != "kidney" else [x for x in labels.values() if x > 0])
                           for k, v in labels.items() if v > 0}
    except (TypeError, ValueError) as exc:  # e.g. a label value that is not a number
        raise KitsegError(f'dataset.json "labels" are malformed ({exc}); expected names mapped to label values',
                          path) from None
    try:
        spec = DatasetSpec(name=str(raw.get("name", root.name)), labels=labels, regions=regions,
                           layout=raw.get("layout", "nnunet" if (root / "imagesTr").is_dir() else "kits"),
                           file_ending=raw.get("file_ending", ".nii.gz"))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise KitsegError(f"dataset.json field {'.'.join(map(str, first['loc']))}: {first['msg']}", path) from None
    return spec, raw


def open_dataset(root: str | Path, preset: str | None = None) -> Dataset:
    """Find the cases of a dataset folder in any supported layout."""
    root = Path(root)
    if not root.is_dir():
        raise KitsegError("no such dataset folder", root)
    raw: dict = {}
    if (root / "dataset.json").exists():
        spec, raw = read_spec(root)
    else:
        spec = KITS19
    if preset is not None:
        if preset not in PRESETS:
            raise KitsegError(f"unknown label preset {preset!r}; use one of {', '.join(PRESETS)}")
        spec = PRESETS[preset]
    if (root / "imagesTr").is_dir() or raw.get("training"):
        cases = _nnunet_cases(root, raw, spec)
    else:
        cases = _kits_cases(root)
    if not cases:
        raise KitsegError("no cases found (expected case_XXXXX/ folders or imagesTr/ + labelsTr/)", root)
    return Dataset(root, spec, tuple(cases))


def _kits_cases(root: Path) -> list[Case]:
    cases = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and _KITS_CASE.match(p.name)):
        image = next((d / f"imaging{e}" for e in (".nii.gz", ".nii") if (d / f"imaging{e}").exists()), None)
        label = next((d / f"segmentation{e}" for e in (".nii.gz", ".nii")
                      if (d / f"segmentation{e}").exists()), None)
        if image is None and label is None:
            continue
        cases.append(Case(d.name, image, label))
    return cases


def _nnunet_cases(root: Path, raw: dict, spec: DatasetSpec) -> list[Case]:
    if raw.get("training"):  # MSD: explicit list of {"image": ..., "label": ...}
        cases = []
        items = raw["training"]
        for item in items if isinstance(items, list) else [items]:
            if not (isinstance(item, dict) and isinstance(item.get("image"), str)
                    and isinstance(item.get("label"), (str, type(None)))):
                raise KitsegError(f'dataset.json "training" must list {{"image": path, "label": path}} objects, got '
                                  f"{json.dumps(item)[:80]}", root / "dataset.json")
            image = _safe_child(root, item["image"], "image")
            label = _safe_child(root, item["label"], "label") if item.get("label") else None
            cid = Path(item["image"]).name.removesuffix(spec.file_ending)
            cases.append(Case(cid, image if image.exists() else None, label))
        return cases
    ending = spec.file_ending
    images = {p.name[: -len(ending)].rsplit("_", 1)[0]: p
              for p in sorted((root / "imagesTr").glob(f"*_0000{ending}"))}
    labels = {p.name[: -len(ending)]: p for p in sorted((root / "labelsTr").glob(f"*{ending}"))} \
        if (root / "labelsTr").is_dir() else {}
    return [Case(cid, images.get(cid), labels.get(cid)) for cid in sorted(set(images) | set(labels))]


def find_images(path: str | Path) -> list[tuple[str, Path]]:
    """The CT inputs under ``path`` as (case id, path): one file, one DICOM folder, or a folder of them.

    A folder is read as: a dataset (KiTS or nnU-Net layout; imagesTs/ preferred over imagesTr/),
    or plain image files, or sub-folders each holding one DICOM series.
    """
    path = Path(path)
    if not path.exists():
        raise KitsegError("no such file or folder", path)
    if path.is_file():
        return [(case_id_of(path), path)]
    if (path / "imagesTs").is_dir():
        return [(case_id_of(p, nnunet=True), p) for p in sorted((path / "imagesTs").glob("*_0000.nii*"))]
    files = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
    if files:
        return [(case_id_of(p), p) for p in files]
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    if any(_KITS_CASE.match(d.name) for d in subdirs) or (path / "imagesTr").is_dir():
        return [(c.case_id, c.image) for c in open_dataset(path).cases if c.image is not None]
    if subdirs:
        return [(d.name, d) for d in subdirs]
    if not any(p.is_file() and not p.name.startswith(".") for p in path.iterdir()):
        raise KitsegError("empty folder: no CT image files, DICOM series or case folders in it", path)
    return [(path.name, path)]  # a DICOM series folder


def case_id_of(path: Path, nnunet: bool = False) -> str:
    """``case_00001/imaging.nii.gz`` -> case_00001; ``x_0000.nii.gz`` -> x (nnU-Net); ``ct.nrrd`` -> ct."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name in ("imaging", "segmentation") and _KITS_CASE.match(path.parent.name):
        return path.parent.name
    if nnunet or re.search(r"_\d{4}$", name):
        name = re.sub(r"_\d{4}$", "", name)
    return name
