"""Synthetic abdominal CT with kidneys, tumors and cysts (``kitseg synth``); see docs/SYNTH.md.

- ``make_case(seed, size, layout, geometry)`` -> (image, label) Volumes of one procedural case.
- ``render_from_label(label, seed)`` -> a CT whose kidneys and tumors are exactly a given label map;
  ``render_with_tissues(label, seed)`` -> that CT and the tissue map it was painted from.
- ``make_dataset(out_dir, cases, seed, size, layout, from_masks=None)`` writes a KiTS-layout dataset.
- ``write_preview(dataset_dir, png_path)`` draws a montage with label contours.

Modules: ``anatomy`` (body and organs), ``kidney`` (kidneys, tumors, cysts), ``tissues`` (HU and
the scanner model), ``fields`` (smooth random fields in mm), ``procedural`` (drawing and sampling
a case), ``render`` (label-map rendering), ``dataset`` (writing), ``preview`` (montage).
"""

from kitseg.synth.dataset import case_seed, make_case, make_dataset
from kitseg.synth.preview import write_preview
from kitseg.synth.procedural import SIZES, draw_case, synthesize
from kitseg.synth.render import downsample_label, render_from_label, render_with_tissues
from kitseg.synth.tissues import RENDERER_VERSION

__all__ = ["RENDERER_VERSION", "SIZES", "case_seed", "downsample_label", "draw_case", "make_case", "make_dataset",
           "render_from_label", "render_with_tissues", "synthesize", "write_preview"]
