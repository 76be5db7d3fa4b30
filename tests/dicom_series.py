"""DICOM CT series made for the tests with pydicom (no shared data needed), and a repaired copy of a real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct_series(folder: Path, array: np.ndarray, spacing=(2.5, 0.8, 0.7), origin=(-20.0, 10.0, 40.0),
                    row_dir=(1.0, 0.0, 0.0), col_dir=(0.0, 1.0, 0.0)) -> Path:
    """Write ``array`` (slice, row, column) int16 as a CT series: slice k at origin + k * spacing[0] along the
    normal. Files are named in reverse slice order and InstanceNumbers run backwards, so a reader that trusts
    either instead of the positions puts slices in the wrong place."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    normal = np.cross(row_dir, col_dir)
    n = array.shape[0]
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID, ds.PatientSex = "CT", "Test^Phantom", "KT1", "O"
        ds.PatientBirthDate, ds.StudyDate, ds.StudyTime, ds.StudyID = "", "20260101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 3, n - k, "kitseg tests"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * spacing[0] * normal]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]  # row spacing, column spacing
        ds.SliceThickness = float(spacing[0])
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.ascontiguousarray(array[k], dtype="<i2").tobytes()
        ds.save_as(folder / f"slice_{n - k:03d}.dcm", enforce_file_format=True)
    return folder


def repaired_copy(src: Path, dst: Path) -> Path:
    """A copy of an anonymized series whose Study/Series Instance UIDs were blanked, with new ones filled in:
    what a DICOM-SEG needs to reference it."""
    dst.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = ds.get("StudyInstanceUID") or study
        ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or series
        ds.SOPInstanceUID = ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.get("SOPClassUID") or ds.file_meta.MediaStorageSOPClassUID
        ds.save_as(dst / f.name)
    return dst
