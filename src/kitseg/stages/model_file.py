"""Reading a shareable model file (``model.kitseg``, written by ``kitseg export``) into a ``LoadedRun``.

The file is a zip archive of plain members and nothing that can run code:

- ``kitseg-model.json``: the manifest (``format`` "kitseg-model", ``format_version``, the kitseg
  version that wrote it, each stage's members (fold, epoch, network, weights member) and the SHA-256
  of every other member);
- ``recipe.json``, ``dataset.json`` (label convention), ``fingerprint.json`` (when the run had one),
  ``model_card.json``;
- ``weights/<stage>/fold_<k>.safetensors``: the network weights (safetensors: tensors only);
  ``fold_<k>_member_<m>.safetensors`` for a fold's further ensemble members (``kitseg train --ensemble``).

``load_model`` refuses a hostile or damaged file with one line before building anything: a member
whose path escapes (absolute, ``..``, a drive, a link), a member that is not listed or is missing,
a pickled object (a ``.pt``/``.pkl`` member or pickle bytes where weights belong), a wrong checksum,
a newer format, an unreadable zip.
"""

from __future__ import annotations

import hashlib
import json
import stat
import zipfile
from pathlib import Path, PurePosixPath

import torch

from kitseg.datasets import DatasetSpec
from kitseg.errors import KitsegError
from kitseg.training_data import TrainingData

FORMAT = "kitseg-model"
FORMAT_VERSION = 1
MANIFEST = "kitseg-model.json"
SUFFIX = ".kitseg"
MAX_MEMBER_BYTES = 4 * 2**30  # a member claiming more than this (uncompressed) is refused before reading it
_PICKLE_ENDINGS = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".npy", ".npz", ".joblib")


def is_model_file(path: str | Path) -> bool:
    p = Path(path)
    return p.is_file() and (p.name.lower().endswith(SUFFIX) or zipfile.is_zipfile(p))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_names(zf: zipfile.ZipFile, path: Path) -> dict[str, zipfile.ZipInfo]:
    members = {}
    for info in zf.infolist():
        name = info.filename
        pure = PurePosixPath(name)
        mode = info.external_attr >> 16
        if (name.startswith(("/", "\\")) or "\\" in name or ":" in name or ".." in pure.parts
                or pure.is_absolute() or stat.S_ISLNK(mode)):
            raise KitsegError(f"refused: member {name!r} would escape the model (absolute path, '..', drive "
                              "or link)", path)
        if name.lower().endswith(_PICKLE_ENDINGS):
            raise KitsegError(f"refused: member {name!r} is a pickled or executable-format object; kitseg model "
                              "files hold only JSON and safetensors weights", path)
        if info.file_size > MAX_MEMBER_BYTES:
            raise KitsegError(f"refused: member {name!r} claims {info.file_size} bytes", path)
        if name in members:
            raise KitsegError(f"refused: member {name!r} appears twice", path)
        members[name] = info
    return members


def read_manifest(zf: zipfile.ZipFile, path: Path) -> dict:
    members = _check_names(zf, path)
    if MANIFEST not in members:
        raise KitsegError(f"not a kitseg model file (no {MANIFEST})", path)
    try:
        manifest = json.loads(zf.read(MANIFEST).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError) as exc:
        raise KitsegError(f"damaged model file: unreadable manifest ({exc})", path) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise KitsegError(f"not a kitseg model file (manifest format is not {FORMAT!r})", path)
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise KitsegError("damaged model file: the manifest has no format_version", path)
    if version > FORMAT_VERSION:
        raise KitsegError(f"model file format {version} is newer than this kitseg reads ({FORMAT_VERSION}); "
                          f"it was written by kitseg {manifest.get('kitseg_version', '?')}: upgrade kitseg", path)
    listed = manifest.get("checksums")
    if not isinstance(listed, dict):
        raise KitsegError("damaged model file: the manifest has no checksums", path)
    extra = sorted(set(members) - set(listed) - {MANIFEST})
    if extra:
        raise KitsegError(f"refused: member {extra[0]!r} is not listed in the manifest", path)
    missing = sorted(set(listed) - set(members))
    if missing:
        raise KitsegError(f"damaged model file: member {missing[0]!r} is missing", path)
    return manifest


def read_member(zf: zipfile.ZipFile, manifest: dict, name: str, path: Path) -> bytes:
    """A member's bytes, checked against the manifest's SHA-256."""
    try:
        data = zf.read(name)
    except (zipfile.BadZipFile, OSError, KeyError, EOFError) as exc:  # includes zip CRC errors
        raise KitsegError(f"damaged model file: member {name!r} cannot be read ({exc})", path) from None
    if sha256(data) != manifest["checksums"].get(name):
        raise KitsegError(f"damaged model file: wrong checksum of member {name!r}", path)
    return data


def _json(zf, manifest, name, path):
    try:
        return json.loads(read_member(zf, manifest, name, path).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise KitsegError(f"damaged model file: {name} is not JSON ({exc})", path) from None


def open_model(path: str | Path) -> tuple[zipfile.ZipFile, dict]:
    path = Path(path)
    if not path.is_file():
        raise KitsegError("no such model file", path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise KitsegError(f"not a kitseg model file (not a readable zip: {exc})", path) from None
    try:
        return zf, read_manifest(zf, path)
    except BaseException:
        zf.close()
        raise


def read_model_card(path: str | Path) -> dict:
    """The model card of a model file (checked like everything else in it)."""
    zf, manifest = open_model(path)
    with zf:
        return _json(zf, manifest, "model_card.json", Path(path))


def _weights(data: bytes, name: str, path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    if data[:1] == b"\x80" or data[:2] in (b"PK",):  # a pickle protocol header or torch's zip format
        raise KitsegError(f"refused: {name} holds a pickled object, not safetensors weights", path)
    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise KitsegError(f"damaged model file: {name} is not safetensors ({str(exc)[:120]})", path) from None


def load_model(path: str | Path, device: str | torch.device | None = "cpu", folds: list[int] | None = None):
    """A ``LoadedRun`` from a model file; ``folds`` selects members (default: every member exported)."""
    from pydantic import ValidationError

    from kitseg.nets import build_network
    from kitseg.preprocessing.records import Fingerprint
    from kitseg.recipes.schema import Recipe
    from kitseg.stages.loaded_run import LoadedRun, resolve_device

    path = Path(path)
    dev = resolve_device(device)
    zf, manifest = open_model(path)
    with zf:
        try:
            recipe = Recipe.model_validate(_json(zf, manifest, "recipe.json", path))
            dataset = DatasetSpec.model_validate(_json(zf, manifest, "dataset.json", path))
            fingerprint = (Fingerprint.model_validate(_json(zf, manifest, "fingerprint.json", path))
                           if "fingerprint.json" in manifest["checksums"] else None)
        except ValidationError as exc:
            raise KitsegError(f"damaged model file: {str(exc).splitlines()[0]}", path) from None
        models: dict[str, list[torch.nn.Module]] = {}
        for stage in recipe.stages:
            members = manifest.get("stages", {}).get(stage.name, [])
            if folds is not None:
                members = [m for m in members if m.get("fold") in folds]
                if {m.get("fold") for m in members} != set(folds):  # a fold may hold several ensemble members
                    have = [m.get("fold") for m in manifest.get("stages", {}).get(stage.name, [])]
                    raise KitsegError(f"stage {stage.name!r} has folds {have} in this model file, not {folds}", path)
            models[stage.name] = []
            for m in members:
                try:
                    net = m["network"]
                    model = build_network(net["name"], net["in_channels"], net["out_channels"], **dict(net["params"]))
                    state = _weights(read_member(zf, manifest, m["weights"], path), m["weights"], path)
                    model.load_state_dict(state)
                except (KeyError, TypeError) as exc:
                    raise KitsegError(f"damaged model file: stage {stage.name!r} member is incomplete ({exc})",
                                      path) from None
                except RuntimeError as exc:
                    raise KitsegError(f"weights of stage {stage.name!r} do not fit network {net['name']!r}: "
                                      f"{str(exc).splitlines()[0]}", path) from None
                models[stage.name].append(model.to(dev).eval())
        card = _json(zf, manifest, "model_card.json", path) if "model_card.json" in manifest["checksums"] else {}
    try:
        training = TrainingData.model_validate(card["training_data"]) if isinstance(card, dict) and card.get(
            "training_data") else None
    except ValidationError:
        training = None  # a card this version cannot read says nothing about the training data
    return LoadedRun(recipe, dataset, fingerprint, models, dev, path, training)


__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "SUFFIX", "is_model_file", "load_model", "open_model",
           "read_model_card", "sha256"]
