"""Reading and writing Volumes: NIfTI, NRRD, MHA/MHD, DICOM series, in-memory images.

``read_volume`` accepts a path (file or DICOM series folder), a ``Volume``, a SimpleITK image or a
nibabel-style image (anything with ``affine`` and ``get_fdata``/``dataobj``), and returns a Volume
in the canonical orientation (see ``kitseg.volume``). ``write_volume`` restores the file's own
orientation, so a prediction made on a read Volume is written with exactly its input's shape and
geometry. Every failure is a ``KitsegError`` naming the file; nothing half-written is left behind.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from kitseg._atomic import atomic_path
from kitseg.errors import KitsegError
from kitseg.volume import CANONICAL_CODES, Source, Volume, reorient

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# A header that claims more voxels than this is refused before anything is allocated
# (the largest KiTS19 case has 611 x 512 x 512 = 1.6e8 voxels).
MAX_VOXELS = 2_000_000_000
MAX_AXIS = 20_000

VolumeLike = Any  # str | Path | Volume | sitk.Image | nibabel image


def is_image_file(path: str | Path) -> bool:
    name = str(path).lower()
    return name.endswith(IMAGE_SUFFIXES)


# ---------------------------------------------------------------------------------------------
# SimpleITK <-> Volume
# ---------------------------------------------------------------------------------------------
def from_sitk(img: sitk.Image, path: str | Path | None = None) -> Volume:
    """Convert a 3D SimpleITK image into a canonical-orientation Volume (exact: no resampling).

    Reorientation is an axis permutation and flips of the numpy array (about 100x faster than
    SimpleITK's DICOMOrient on a 611x512x512 KiTS19 volume: 0.2 s vs 15 s here).
    """
    if img.GetDimension() != 3:
        raise KitsegError(f"expected a 3D image, got {img.GetDimension()}D of size {img.GetSize()}", path)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise KitsegError(
            f"expected one value per voxel, got {img.GetNumberOfComponentsPerPixel()} (a colour or vector image)",
            path)
    dir_xyz = np.array(img.GetDirection(), dtype=float).reshape(3, 3)  # columns: x, y, z axes
    native = Volume.from_geometry(sitk.GetArrayFromImage(img), spacing=img.GetSpacing()[::-1],
                                  origin=img.GetOrigin(), direction=dir_xyz[:, ::-1])
    source = Source(None if path is None else str(path), native.axis_codes, native.shape,
                    img.GetPixelIDTypeAsString())
    return reorient(native, CANONICAL_CODES, source)


def to_sitk(vol: Volume, restore_orientation: bool = True) -> sitk.Image:
    """Convert a Volume to a SimpleITK image, back in its source file's orientation when known."""
    if restore_orientation and vol.source is not None:
        vol = reorient(vol, vol.source.axis_codes)
    array = vol.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing([float(s) for s in vol.spacing[::-1]])
    img.SetOrigin([float(o) for o in vol.origin])
    img.SetDirection([float(d) for d in vol.direction[:, ::-1].ravel()])
    return img


def _from_nibabel(obj: Any) -> Volume:
    """Convert a nibabel-style image (RAS affine over its (i, j, k) array) without importing nibabel."""
    data = np.asarray(obj.dataobj) if hasattr(obj, "dataobj") else np.asarray(obj.get_fdata())
    if data.ndim != 3:
        raise KitsegError(f"expected a 3D image, got an array of shape {data.shape}")
    ras = np.asarray(obj.affine, dtype=float)
    lps = np.diag([-1.0, -1.0, 1.0]) @ ras[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin((np.diag([-1.0, -1.0, 1.0]) @ ras[:3, 3]).tolist())
    img.SetDirection((lps / spacing[None, :]).ravel().tolist())
    return from_sitk(img)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def _check_header(path: Path) -> None:
    """Read only the header; refuse non-3D images and absurd sizes before allocating anything."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise KitsegError(f"not a readable image ({_itk_reason(exc)})", path) from None
    size = tuple(reader.GetSize())
    dim = reader.GetDimension()
    if dim == 4 and size[3] == 1:
        size = size[:3]
    if len(size) != 3:
        raise KitsegError(f"expected a 3D image, got {len(size)}D of size {size}", path)
    if min(size) < 1 or max(size) > MAX_AXIS or int(np.prod(size, dtype=np.int64)) > MAX_VOXELS:
        raise KitsegError(f"header claims absurd dimensions {size}; refusing to allocate", path)
    if reader.GetNumberOfComponents() != 1:
        raise KitsegError(f"expected one value per voxel, got {reader.GetNumberOfComponents()}", path)


def _scan_file(path: Path) -> int:
    """Stream through the file once; return its count of NaN/Inf voxels (NIfTI float data).

    Two reasons to look at the bytes ourselves: ITK reads a truncated gzip stream silently as
    zeros, and ITK's NIfTI reader turns NaN voxels into 0, so a NaN-corrupted CT would pass.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(540)
            dtype, offset = _nifti_float_layout(head)
            if dtype is None:
                while fh.read(1 << 24):
                    pass
                return 0
            pending = head[offset:] if len(head) >= offset else b""
            if len(head) < offset:
                fh.read(offset - len(head))
            bad = 0
            while True:
                chunk = fh.read(1 << 24)
                data = pending + chunk
                usable = len(data) - len(data) % dtype.itemsize
                if usable:
                    bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:usable], dtype))))
                pending = data[usable:]
                if not chunk:
                    return bad
    except (OSError, EOFError, zlib.error) as exc:
        raise KitsegError(f"corrupt or truncated gzip stream ({exc})", path) from None


def _nifti_float_layout(head: bytes) -> tuple[np.dtype | None, int]:
    """(float dtype, data offset) of a NIfTI-1/2 header holding float voxels, else (None, 0)."""
    for endian in ("<", ">"):
        size = int(np.frombuffer(head[:4], endian + "i4")[0]) if len(head) >= 4 else 0
        if size == 348 and len(head) >= 112:
            code = int(np.frombuffer(head[70:72], endian + "i2")[0])
            offset = int(np.frombuffer(head[108:112], endian + "f4")[0])
        elif size == 540 and len(head) >= 176:
            code = int(np.frombuffer(head[12:14], endian + "i2")[0])
            offset = int(np.frombuffer(head[168:176], endian + "i8")[0])
        else:
            continue
        kind = {16: "f4", 64: "f8"}.get(code)
        return (np.dtype(endian + kind), max(offset, 352)) if kind else (None, 0)
    return None, 0


def _itk_reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Description:" in ln:
            return ln.split("Description:", 1)[1].strip()
    return lines[-1] if lines else type(exc).__name__


def read_dicom_series(folder: str | Path) -> Volume:
    """Read the one DICOM series in ``folder`` (slices sorted by position; rescale applied)."""
    folder = Path(folder)
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise KitsegError("no DICOM series in this folder", folder)
    if len(ids) > 1:
        raise KitsegError(
            f"holds {len(ids)} DICOM series ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''}); "
            "put each series in its own folder and give one", folder)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])
    if len(files) < 2:
        raise KitsegError(f"the DICOM series has {len(files)} slice; a 3D volume needs several", folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise KitsegError(f"DICOM series could not be read ({_itk_reason(exc)})", folder) from None
    return from_sitk(img, folder)


def read_volume(src: VolumeLike, *, check_finite: bool = True) -> Volume:
    """Read a 3D image or label map from a path, DICOM folder or in-memory image into a Volume."""
    if isinstance(src, Volume):
        return src
    if isinstance(src, sitk.Image):
        vol = from_sitk(src)
    elif hasattr(src, "affine") and (hasattr(src, "dataobj") or hasattr(src, "get_fdata")):
        vol = _from_nibabel(src)
    else:
        path = Path(src)
        if not path.exists():
            raise KitsegError("no such file or folder", path)
        if path.is_dir():
            vol = read_dicom_series(path)
        else:
            if not is_image_file(path) and path.suffix.lower() not in (".dcm", ".ima", ""):
                raise KitsegError(
                    f"not an image file (expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder)", path)
            if path.stat().st_size == 0:
                raise KitsegError("file is empty", path)
            _check_header(path)
            nonfinite = _scan_file(path) if path.name.lower().endswith((".gz", ".nii")) else 0
            if nonfinite and check_finite:
                raise KitsegError(f"{nonfinite} voxels are NaN or Inf; fix or mask them before segmentation",
                                  path)
            try:
                img = sitk.ReadImage(str(path))
            except RuntimeError as exc:
                raise KitsegError(f"could not be read ({_itk_reason(exc)})", path) from None
            if img.GetDimension() == 4:
                img = img[:, :, :, 0]
            vol = from_sitk(img, path)
    if check_finite:
        assert_finite(vol)
    return vol


def assert_finite(vol: Volume) -> None:
    if np.issubdtype(vol.array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(vol.array)))
        if bad:
            raise KitsegError(f"{bad} voxels are NaN or Inf; fix or mask them before segmentation",
                              vol.source.path if vol.source else None)


def read_label(src: VolumeLike, allowed: set[int] | None = None) -> Volume:
    """Read a label map as uint8, refusing non-integer values and values outside ``allowed``."""
    vol = read_volume(src)
    path = vol.source.path if vol.source else None
    arr = vol.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.array_equal(arr, np.round(arr)):
            raise KitsegError("label volume has non-integer values", path)
    lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
    if lo < 0 or hi > 255:
        values = sorted(int(v) for v in np.unique(arr))
        raise KitsegError(f"label volume has values {_fmt(values)}; expected small non-negative labels", path)
    arr = arr.astype(np.uint8, copy=False)
    if allowed is not None and not (set(range(int(hi) + 1)) <= set(allowed)):
        present = {int(v) for v in np.flatnonzero(np.bincount(arr.ravel(), minlength=1))}
        if not present <= set(allowed):
            raise KitsegError(
                f"label volume has values {_fmt(sorted(present))}; expected {_fmt(sorted(allowed))}", path)
    return vol.with_array(arr)


def _fmt(values) -> str:
    return "{" + ",".join(str(v) for v in values) + "}"


def check_same_grid(image: Volume, label: Volume, what: str = "image and label") -> None:
    """Refuse an image/label pair whose shape or geometry differ (a classic source of silent error)."""
    path = label.source.path if label.source else None
    if image.shape != label.shape:
        raise KitsegError(f"{what} shapes differ: {image.shape} vs {label.shape}", path)
    if not np.allclose(image.affine, label.affine, atol=1e-3):
        raise KitsegError(
            f"{what} geometry differs (spacing {image.spacing} vs {label.spacing}, "
            f"origin {image.origin} vs {label.origin})", path)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def write_volume(vol: Volume, path: str | Path, *, dtype: Any = None, compress: bool = True) -> Path:
    """Write ``vol`` to ``path`` (format from the ending) in its source file's orientation, atomically."""
    path = Path(path)
    if not is_image_file(path):
        raise KitsegError(f"unknown output format; use one of {', '.join(IMAGE_SUFFIXES)}", path)
    if dtype is not None:
        vol = vol.with_array(vol.array.astype(dtype, copy=False))
    img = to_sitk(vol)
    if path.suffix.lower() in (".mhd", ".nhdr"):
        return _write_two_files(img, path, compress)
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(img, str(tmp), useCompression=compress and not str(path).endswith(".nii"))
        except RuntimeError as exc:
            raise KitsegError(f"could not be written ({_itk_reason(exc)})", path) from None
        _verify_written(tmp, vol.array.nbytes, path)
    return path


def _verify_written(tmp: Path, nbytes: int, path: Path) -> None:
    """ITK's NIfTI writer reports a short write (disk full, file-size limit) only on stderr."""
    if tmp.name.lower().endswith(".gz"):
        total = 0
        try:
            with gzip.open(tmp, "rb") as fh:
                while chunk := fh.read(1 << 24):
                    total += len(chunk)
        except (OSError, EOFError, zlib.error):
            total = -1
    else:
        total = tmp.stat().st_size
    if total < nbytes:
        raise KitsegError("could not be written completely (disk full or file-size limit?)", path)


def _write_two_files(img: sitk.Image, path: Path, compress: bool) -> Path:
    """Header + data pairs (.mhd/.raw, .nhdr/.raw): data first, header renamed last."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        try:
            sitk.WriteImage(img, str(tmpdir / path.name), useCompression=compress)
        except RuntimeError as exc:
            raise KitsegError(f"could not be written ({_itk_reason(exc)})", path) from None
        for f in sorted(tmpdir.iterdir(), key=lambda p: p.name == path.name):
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path
