"""`Volume`: a numpy array in (z, y, x) order with the geometry that places it in the patient.

The geometry is one record, the 4x4 ``affine`` that maps a voxel index ``(z, y, x, 1)`` to a
physical point in millimetres in ITK/DICOM patient coordinates (LPS: x to the patient's left,
y to posterior, z to superior). Spacing, origin and direction are derived from it, so they can
never drift apart.

Readers reorient every file to one canonical orientation: x -> L, y -> P, z -> S, the identity
direction of ITK ("LPS"). ``arr[z]`` is then an axial slice shown in the radiological convention
(anterior at the top, the patient's right on the left of the picture). The original orientation is
remembered in ``source`` so that a prediction written back gets exactly its input's geometry.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np

# Direction each canonical array axis (z, y, x) points toward: superior, posterior, left.
CANONICAL_CODES = "SPL"
# Columns: the LPS unit vectors of the z, y and x axes in the canonical orientation.
CANONICAL_DIRECTION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@dataclass(frozen=True)
class Source:
    """Where a Volume came from: the file, its own axis orientation and its own array shape.

    ``axis_codes`` and ``shape`` are in numpy (z, y, x) order of the file's array, e.g. "LPI" and
    (512, 512, 611) for KiTS19 files (nibabel calls the same file (611, 512, 512) with codes I,P,L).
    """

    path: str | None
    axis_codes: str
    shape: tuple[int, ...]
    pixel_type: str = ""

    @property
    def itk_orientation(self) -> str:
        """The orientation code ITK and nibabel print, in file-axis order (i, j, k)."""
        return self.axis_codes[::-1]


def _affine(spacing, origin, direction) -> np.ndarray:
    """Build the (z, y, x) -> LPS affine from spacing (z, y, x), origin (x, y, z) and direction.

    ``direction`` is the 3x3 matrix whose columns are the unit vectors of the (z, y, x) axes.
    """
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(direction, float) * np.asarray(spacing, float)[None, :]
    aff[:3, 3] = np.asarray(origin, float)
    return aff


@dataclass(frozen=True, eq=False)
class Volume:
    """An image or label map and its geometry. Functions return new Volumes; treat it as immutable.

    ``array``: numpy array indexed (z, y, x). ``affine``: 4x4, voxel (z, y, x, 1) -> LPS mm.
    ``source``: the file's orientation, remembered for writing back (None for volumes made in memory).
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: _affine((1, 1, 1), (0, 0, 0), CANONICAL_DIRECTION))
    source: Source | None = None

    def __post_init__(self):
        if self.array.ndim != 3:
            raise ValueError(f"a Volume is 3D, got an array of shape {self.array.shape}")
        aff = np.asarray(self.affine, dtype=np.float64)
        if aff.shape != (4, 4):
            raise ValueError("affine must be 4x4")
        object.__setattr__(self, "affine", aff)

    @classmethod
    def from_geometry(cls, array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None,
                      source: Source | None = None) -> Volume:
        """Make a Volume from spacing (z, y, x) mm, origin (LPS x, y, z) mm and direction columns.

        The default direction is the canonical one (z -> S, y -> P, x -> L).
        """
        direction = CANONICAL_DIRECTION if direction is None else direction
        return cls(np.asarray(array), _affine(spacing, origin, direction), source)

    # ---- derived geometry -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm in (z, y, x) order."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore

    @property
    def origin(self) -> tuple[float, float, float]:
        """Physical LPS position (x, y, z) in mm of the centre of voxel (0, 0, 0)."""
        return tuple(float(v) for v in self.affine[:3, 3])  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit LPS directions of the z, y and x array axes."""
        return self.affine[:3, :3] / np.asarray(self.spacing)[None, :]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def axis_codes(self) -> str:
        """Anatomical direction each array axis (z, y, x) points toward, e.g. "SPL" when canonical."""
        codes = []
        for col in self.direction.T:
            k = int(np.argmax(np.abs(col)))
            codes.append("LPS"[k] if col[k] > 0 else "RAI"[k])
        return "".join(codes)

    # ---- making related volumes -------------------------------------------------------------
    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry with other voxel values (a prediction, a normalized image)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the volume's {self.array.shape}")
        return replace(self, array=array)

    def index_to_world(self, index) -> np.ndarray:
        """Map (z, y, x) indices (N x 3 or 3) to LPS millimetres."""
        idx = np.atleast_2d(np.asarray(index, dtype=float))
        return (idx @ self.affine[:3, :3].T + self.affine[:3, 3]).squeeze()

    def same_geometry(self, other: Volume, atol: float = 1e-4) -> bool:
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    def describe(self) -> str:
        sp = ", ".join(f"{s:.3g}" for s in self.spacing)
        return f"shape {self.shape} (z, y, x), spacing ({sp}) mm, axes {self.axis_codes}"

    def __repr__(self) -> str:
        return f"Volume({self.describe()}, dtype {self.array.dtype})"


def reorient(vol: Volume, codes: str, source: Source | None | bool = True) -> Volume:
    """Permute and flip the array axes so they point toward ``codes`` (e.g. "SPL"); exact, no resampling.

    The physical position of every voxel is unchanged. For oblique images the axis permutation
    that best aligns each array axis with its target is chosen. ``source=True`` keeps the
    Volume's own source record; pass a Source or None to set it.
    """
    if source is True:
        source = vol.source
    absdir = np.abs(vol.direction)
    targets = ["LPS".index(c) if c in "LPS" else "RAI".index(c) for c in codes]
    perm = max(itertools.permutations(range(3)),
               key=lambda p: float(np.prod([absdir[targets[t], p[t]] for t in range(3)])))
    array = vol.array.transpose(perm)
    aff = vol.affine.copy()
    aff[:3, :3] = vol.affine[:3, list(perm)]
    flips = []
    for t, c in enumerate(codes):
        k = targets[t]
        points_positive = aff[k, t] > 0  # toward L, P or S
        if points_positive != (c in "LPS"):
            flips.append(t)
            aff[:3, 3] += (array.shape[t] - 1) * aff[:3, t]
            aff[:3, t] = -aff[:3, t]
    if flips:
        array = np.flip(array, axis=tuple(flips))
    if list(perm) != [0, 1, 2] or flips:
        array = _blocked_copy(array)
    return Volume(array, aff, source if isinstance(source, Source) else None)


def _blocked_copy(view: np.ndarray, block: int = 32) -> np.ndarray:
    """A contiguous copy of a transposed/flipped view, in slabs that stay in cache.

    ``np.ascontiguousarray`` of a (512, 512, 611) -> (611, 512, 512) transpose takes 3.7 s here;
    copying 32 rows of the middle axis at a time takes 0.3 s.
    """
    out = np.empty(view.shape, dtype=view.dtype)
    for i in range(0, view.shape[1], block):
        out[:, i:i + block] = view[:, i:i + block]
    return out


def bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Bounding box of the non-zero voxels of ``mask`` grown by ``margin`` (clipped), or None if empty."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=other))
        if hit.size == 0:
            return None
        lo, hi = max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, mask.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)
