"""Write a volume as a DICOM series of single-frame slices, with exact geometry.

Used by ``medflow sample-data --format dicom`` and by the tests, which need series
of known geometry (axial, coronal, sagittal, oblique, tilted) and every defect a
reader must catch. The voxel order is the reader's: (columns, rows, slices).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from medflow.data.atomic import write_atomic

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}


def _ds(value: float) -> str:
    """A decimal string (VR DS, at most 16 characters) that keeps the value to about 1e-9 mm."""
    for digits in range(12, 3, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.4g}"


def stored_values(data: np.ndarray, slope: float, intercept: float, bits: int = 16,
                  signed: bool = True) -> np.ndarray:
    """The stored values (int16, or uint16 when not ``signed``) a reader turns back into ``data`` with
    ``slope`` and ``intercept``, checked against the ``bits`` stored."""
    stored = np.rint((np.asarray(data, dtype=np.float64) - intercept) / slope)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if stored.min() < lo or stored.max() > hi:
        raise ValueError(f"values {data.min()}..{data.max()} do not fit {bits} bits with slope {slope}, "
                         f"intercept {intercept}")
    return stored.astype(np.int16 if signed else np.uint16)


def write_series(folder: str | os.PathLike, data: np.ndarray, affine: np.ndarray, *, modality: str = "MR",
                 slope: float = 1.0, intercept: float = 0.0, patient_name: str = "Anonymous",
                 patient_id: str = "anon", study_uid: str | None = None, series_uid: str | None = None,
                 series_description: str = "", image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
                 file_names=None, bits_stored: int = 16, signed: bool = True) -> list[str]:
    """Write ``data`` (columns, rows, slices) as one series, one file per slice; return the paths.

    Args:
        affine: (4, 4) voxel -> RAS+ mm. Its third column may be sheared against the slice normal
            (a gantry tilt); the first two set the row and column cosines and the pixel spacing.
        slope, intercept: the rescale written to every slice (stored int16 = (value - intercept) / slope).
        file_names: one name per slice (default ``slice_0000.dcm`` ...), e.g. shuffled for tests.
        bits_stored, signed: BitsStored and PixelRepresentation of the 16-bit stored values (a CT scanner
            typically writes 12 bits, unsigned, with intercept -1024).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :2], axis=0)
    row, col = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    stored = stored_values(data, slope, intercept, bits_stored, signed)
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    frame_uid = generate_uid()
    today = datetime.date(2026, 1, 1).strftime("%Y%m%d")
    names = list(file_names) if file_names is not None else [f"slice_{k:04d}.dcm" for k in range(data.shape[2])]
    paths = []
    for k in range(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = _SOP_CLASS[modality]
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, k + 1
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.Modality, ds.Manufacturer, ds.SeriesDescription = modality, "medflow", series_description
        ds.InstitutionName = "medflow sample hospital"
        ds.ImageType = list(image_type)
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [_ds(v) for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # between rows, between columns
        ds.SliceThickness = _ds(float(np.linalg.norm(lps[:3, 2])))
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(data.shape[1]), int(data.shape[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
        if modality == "CT":
            ds.RescaleType, ds.KVP = "HU", "120"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (rows, columns)
        path = folder / names[k]
        with write_atomic(path, suffix=".dcm") as tmp:
            pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
        paths.append(str(path))
    return paths
