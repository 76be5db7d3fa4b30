"""Post-processing of predicted label maps and probability maps, from the papers (pure functions).

- :func:`keep_largest_components`, :func:`filter_components_multiclass` (Zhang et al. section 2.4;
  3D FCN-PPM section II.B with 18-connectivity), :func:`tumor_inside_kidney`, :func:`median_filter3`
  (TuNet section 3.2): ``components.py``.
- :func:`tunet_algorithm1` and :func:`region_grow` (TuNet Algorithm 1): ``tunet.py``.
- :func:`dense_crf` (3D FCN-PPM section II.B; optional ``pydensecrf2``): ``crf.py``.

``OPS`` maps the names recipes use (``PostStep.op``) to the label-map functions.
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

# Recipe op name -> function(labels, **params) -> labels (uint8). "crf" works on probabilities: call dense_crf.
OPS = {
    "largest_components": filter_components_multiclass,
    "median": median_filter3,
    "tumor_in_kidney": tumor_inside_kidney,
}

__all__ = [
    "OPS",
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
