"""Pooling plans from the patch shape, as nnU-Net and Zhang et al. (section 2.1) choose them.

Zhang et al. (KiTS19, section 2.1): "max pooling 1x2x2 or 2x2x2 is chosen from the patch shape";
an axis is pooled while its feature-map size is still >= 8, up to five times. For an 80x160x160
patch this gives pool counts (4, 5, 5): four 2x2x2 poolings and a final 1x2x2 one.
"""

from __future__ import annotations

from collections.abc import Sequence

from kitseg.errors import KitsegError


def pool_plan(patch_size: Sequence[int], min_size: int = 8, max_levels: int = 5) -> tuple[int, ...]:
    """Per-axis number of 2x poolings for ``patch_size``: pool an axis while its size is >= ``min_size``.

    ``pool_plan((80, 160, 160)) == (4, 5, 5)``; ``pool_plan((40, 128, 128)) == (3, 5, 5)``.
    """
    if min_size < 1 or max_levels < 0:
        raise KitsegError(f"pool_plan: min_size must be >= 1 and max_levels >= 0, got {min_size}, {max_levels}")
    counts = []
    for size in patch_size:
        if int(size) < 1:
            raise KitsegError(f"pool_plan: patch size {tuple(patch_size)} has a non-positive axis")
        n, s = 0, int(size)
        while s >= min_size and n < max_levels:
            s //= 2
            n += 1
        counts.append(n)
    return tuple(counts)


def pool_kernels(pool_counts: Sequence[int], order: str = "early") -> list[tuple[int, ...]]:
    """The kernel of each pooling step, 2 on the axes pooled at that step and 1 elsewhere.

    ``order="early"``: axis a is pooled at the first ``pool_counts[a]`` steps, so axes with fewer
    poolings stop early: ``pool_kernels((4, 5, 5))`` -> four (2, 2, 2) then one (1, 2, 2). This is
    the plan a patch shape gives (Zhang et al. section 2.1). ``order="late"``: axis a is pooled at
    the last ``pool_counts[a]`` steps: ``pool_kernels((3, 5, 5), "late")`` -> (1, 2, 2) twice then
    (2, 2, 2) three times. This is nnU-Net's plan for anisotropic spacing, where the coarse axis is
    not pooled until the fine axes have caught up with its spacing.
    """
    counts = [int(c) for c in pool_counts]
    if any(c < 0 for c in counts):
        raise KitsegError(f"pool counts must be >= 0, got {tuple(pool_counts)}")
    if order not in ("early", "late"):
        raise KitsegError(f"pool order must be 'early' or 'late', got {order!r}")
    n = max(counts, default=0)
    if order == "early":
        return [tuple(2 if i < c else 1 for c in counts) for i in range(n)]
    return [tuple(2 if i >= n - c else 1 for c in counts) for i in range(n)]


def size_divisor(pool_counts: Sequence[int]) -> tuple[int, ...]:
    """Per-axis factor an input's size must be divisible by: 2 ** (number of poolings on that axis)."""
    return tuple(2 ** int(c) for c in pool_counts)


def as_pool_counts(pool_counts: int | Sequence[int], dims: int, name: str = "pool_counts") -> tuple[int, ...]:
    """Normalise an int (same count on every axis) or a per-axis sequence to a ``dims``-tuple."""
    if isinstance(pool_counts, int):
        counts = (pool_counts,) * dims
    else:
        counts = tuple(int(c) for c in pool_counts)
    if len(counts) != dims or any(c < 0 for c in counts):
        raise KitsegError(f"{name} must be {dims} non-negative integers, got {pool_counts!r}")
    return counts
