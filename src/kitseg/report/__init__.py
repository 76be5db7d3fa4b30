"""Case reports people can look at: PNG panels per case and one self-contained HTML page per dataset.

- ``measure.py``: volumes, largest tumor diameter (max 3D Feret), laterality (:func:`measure`).
- ``panels.py``: the per-case figure and the Dice box plots (matplotlib, no pyplot).
- ``html.py``: the page (:func:`render_page`).
- ``build.py``: :func:`make_report`, what ``kitseg report`` runs.
"""

from kitseg.report.build import make_report
from kitseg.report.measure import Measurements, body_midline_x, max_feret_diameter_mm, measure

__all__ = ["Measurements", "body_midline_x", "make_report", "max_feret_diameter_mm", "measure"]
