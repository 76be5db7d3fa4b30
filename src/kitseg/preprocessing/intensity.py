"""Intensity normalization schemes of the papers, and 3x3x3 median denoising.

``normalize(image, spec, stats, roi_mask)`` is pure: it returns a new float32 array, computed in
cache-sized chunks (one read, one write; the plain numpy expression makes full-size temporaries;
see BENCHMARKS.md). ``stats_for(fingerprint, spec)`` picks the dataset statistics a
scheme reads (`IntensitySpec.stats_region`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from kitseg.errors import KitsegError
from kitseg.preprocessing.records import Fingerprint, IntensityStats
from kitseg.preprocessing.spec import IntensitySpec


def stats_for(fingerprint: Fingerprint | None, spec: IntensitySpec) -> IntensityStats | None:
    """The dataset statistics ``spec`` needs from ``fingerprint`` (None when it needs none)."""
    region = spec.stats_region
    if region is None:
        return None
    if fingerprint is None or region not in fingerprint.intensity:
        raise KitsegError(f"intensity scheme {spec.scheme!r} needs the dataset's {region!r} intensity statistics: "
                          "run `kitseg fingerprint` on a dataset with images first")
    return fingerprint.intensity[region]


_STEP = 1 << 16  # voxels per chunk: the three passes of a chunk stay in the CPU cache


def _clip_scale(src: np.ndarray, low: float | None, high: float | None, shift: float, scale: float) -> np.ndarray:
    """``(clip(src, low, high) - shift) * scale`` as a new float32 array, in cache-sized chunks.

    One read of ``src`` and one write of the result (the plain numpy expression makes three
    full-size passes and two temporaries).
    """
    src = np.asarray(src)
    out = np.empty(src.shape, dtype=np.float32)
    flat_src, flat_out = src.reshape(-1), out.reshape(-1)
    shift32, scale32 = np.float32(shift), np.float32(scale)
    for i in range(0, flat_src.size, _STEP):
        o = flat_out[i:i + _STEP]
        if low is None:
            o[...] = flat_src[i:i + _STEP]
        else:
            np.clip(flat_src[i:i + _STEP], low, high, out=o)
        o -= shift32
        o *= scale32
    return out


def normalize(image: np.ndarray, spec: IntensitySpec, stats: IntensityStats | None = None,
              roi_mask: np.ndarray | None = None) -> np.ndarray:
    """Normalize ``image`` by ``spec.scheme`` (see `IntensitySpec` for each scheme and its paper).

    ``stats``: the dataset statistics (``stats_for``) for percentile_zscore, nnunet_ct and window
    with subtract_dataset_mean. ``roi_mask``: the kidney mask for kidney_window. Median denoising
    is not applied here (call ``median_denoise`` first; ``preprocess_case`` does). Returns a new
    float32 array; ``image`` is not modified.
    """
    scheme = spec.scheme
    if scheme == "none":
        return np.array(image, dtype=np.float32, copy=True)
    if scheme in ("percentile_zscore", "nnunet_ct"):
        if stats is None:
            raise KitsegError(f"intensity scheme {scheme!r} needs dataset statistics (a fingerprint)")
        lo_q, hi_q = (0.5, 99.5) if scheme == "nnunet_ct" else spec.clip_percentiles
        if scheme == "percentile_zscore" and spec.clip == "case":  # this case's (this ROI's) own percentiles
            low, high = case_percentiles(image, (lo_q, hi_q))
        else:
            low, high = stats.percentile(lo_q), stats.percentile(hi_q)
        return _clip_scale(image, low, high, stats.mean, 1.0 / max(stats.std, 1e-8))
    if scheme == "window":
        lo, hi = spec.window  # type: ignore[misc]
        shift = lo
        if spec.subtract_dataset_mean:
            if stats is None:
                raise KitsegError("window with subtract_dataset_mean needs dataset statistics (a fingerprint)")
            shift = lo + stats.window_mean(lo, hi) * (hi - lo)  # (x - lo) / w - m == (x - (lo + m w)) / w
        return _clip_scale(image, lo, hi, shift, 1.0 / (hi - lo))
    if scheme == "window_zscore":
        lo, hi = spec.window  # type: ignore[misc]
        return _clip_scale(image, lo, hi, spec.mean, 1.0 / spec.std)  # type: ignore[arg-type,operator]
    if scheme == "volume_zscore":
        x = np.asarray(image)
        mean = float(x.mean(dtype=np.float64))
        std = float(x.std(dtype=np.float64))
        return _clip_scale(x, None, None, mean, 1.0 / std if std > 0 else 1.0)
    if scheme == "kidney_window":
        if roi_mask is None or np.shape(roi_mask) != np.shape(image):
            raise KitsegError("intensity scheme 'kidney_window' needs a kidney mask of the image's shape")
        lo, hi = spec.window  # type: ignore[misc]
        x = _clip_scale(image, lo, hi, lo, 1.0 / (hi - lo))
        x[~np.asarray(roi_mask, dtype=bool)] = 0.0
        return x
    raise KitsegError(f"unknown intensity scheme {scheme!r}")


def case_percentiles(image: np.ndarray, q: tuple[float, float]) -> tuple[float, float]:
    """The ``q`` percentiles (in percent) of every voxel of ``image`` (exact, float64)."""
    x = np.asarray(image).reshape(-1)
    if x.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(x, q)
    return float(lo), float(hi)


def median_denoise(image: np.ndarray, size: int = 3) -> np.ndarray:
    """A ``size``^3 median filter (TuNet 3.2: 3x3x3), borders by replication; returns float32.

    scipy's median filter over slabs of slices (bounded memory, the same result as one call).
    """
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 3:
        raise KitsegError(f"median_denoise takes a 3D array, got shape {x.shape}")
    out = np.empty_like(x)
    r = size // 2
    step = 32
    for k0 in range(0, x.shape[0], step):
        k1 = min(x.shape[0], k0 + step)
        a, b = max(0, k0 - r), min(x.shape[0], k1 + r)
        part = ndimage.median_filter(x[a:b], size=size, mode="nearest")
        out[k0:k1] = part[k0 - a:k0 - a + (k1 - k0)]
    return out


__all__ = ["case_percentiles", "median_denoise", "normalize", "stats_for"]
