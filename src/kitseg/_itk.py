"""ITK's own warnings, silenced while kitseg reads: kitseg says what is wrong, in one line, itself.

ITK prints warnings straight to stderr (e.g. "GDCMSeriesFileNames: No Series were found" before
kitseg's own "no DICOM series in this folder"). ``quiet_itk()`` switches ITK's global warning
display off for the duration of a block and restores the caller's setting afterwards, so a program
that uses SimpleITK beside kitseg keeps its own choice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import SimpleITK as sitk


@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)
