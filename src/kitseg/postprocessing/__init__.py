"""Post-processing of predicted label maps and probability maps, from the papers (pure functions).

- :func:`keep_largest_components`, :func:`filter_components_multiclass` (Zhang et al. section 2.4;
  3D FCN-PPM section II.B with 18-connectivity), :func:`tumor_inside_kidney`, :func:`median_filter3`
  (TuNet section 3.2): ``components.py``.
- :func:`tunet_algorithm1` and :func:`region_grow` (TuNet Algorithm 1): ``tunet.py``.
- :func:`dense_crf` (3D FCN-PPM section II.B; optional ``pydensecrf2``): ``crf.py``.

The names recipes use (``PostStep.op``) are registered in ``kitseg.registry.STAGE_OPS``
(implemented in ``kitseg.stages.ops``).
"""

from kitseg.postprocessing.components import (
    bbox,
    drop_small_tumors,
    filter_components_multiclass,
    keep_largest_components,
    kidneys_by_side,
    label_components,
    median_filter3,
    tumor_inside_kidney,
)
from kitseg.postprocessing.crf import dense_crf
from kitseg.postprocessing.tunet import region_grow, tunet_algorithm1

__all__ = [
    "bbox",
    "dense_crf",
    "drop_small_tumors",
    "filter_components_multiclass",
    "keep_largest_components",
    "kidneys_by_side",
    "label_components",
    "median_filter3",
    "region_grow",
    "tumor_inside_kidney",
    "tunet_algorithm1",
]
