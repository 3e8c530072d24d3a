"""Find the DICOM image series under a folder, reading headers only.

A hospital export is a folder tree in any shape: one series per folder, several
series in one folder, a DICOMDIR beside them, structured reports and RT
structures mixed in. :func:`scan_folder` reads every file's header (no pixel
data), groups the image objects by SeriesInstanceUID and sets aside, with a
notice each, what is not an image or not DICOM at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

# Tags the grouping needs; reading only these keeps a scan of thousands of files cheap.
_SCAN_TAGS = ["SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality", "PatientID", "Rows", "Columns",
              "ImageType", "SeriesDescription"]
# Storage classes that carry no image to train on: DICOMDIR, SEG, RT objects, SR, presentation states,
# key objects, waveforms, encapsulated documents, raw data.
_NON_IMAGE_PREFIXES = (
    "1.2.840.10008.1.3.10",          # Media Storage Directory (DICOMDIR)
    "1.2.840.10008.5.1.4.1.1.66",    # Raw Data, Spatial Registration, Fiducials, Segmentation, Surface Seg.
    "1.2.840.10008.5.1.4.1.1.481",   # RT Image/Dose/Structure Set/Plan...
    "1.2.840.10008.5.1.4.1.1.88",    # Structured reports and key object selection
    "1.2.840.10008.5.1.4.1.1.11",    # Presentation states
    "1.2.840.10008.5.1.4.1.1.9",     # Waveforms
    "1.2.840.10008.5.1.4.1.1.104",   # Encapsulated PDF/CDA/STL
)


@dataclass
class SeriesFiles:
    """The files of one image series, as grouped by :func:`scan_folder`.

    Attributes:
        uid: SeriesInstanceUID.
        study_uid: StudyInstanceUID.
        modality: the header's Modality ('CT', 'MR', ...).
        patient_id: the header's PatientID (identifying: never logged; see :mod:`medflow.data.dicom.ids`).
        files: absolute paths, sorted by name (the reader sorts slices by position).
    """

    uid: str
    study_uid: str
    modality: str
    patient_id: str
    files: list[str] = field(default_factory=list)
    datasets: list = field(default_factory=list)  # with scan_folder(keep=True): each file's dataset, no pixels
    offsets: list = field(default_factory=list)  # ... and the file offset of its PixelData element (or None)


def sop_kind(sop_class_uid: str) -> str | None:
    """The name of a non-image storage class (e.g. 'Segmentation Storage'), or None for an image class."""
    uid = str(sop_class_uid)
    if any(uid == p or uid.startswith(p + ".") for p in _NON_IMAGE_PREFIXES):
        name = pydicom.uid.UID(uid).name
        return name if name != uid else f"non-image object {uid}"
    return None


def _parse(path: str, whole: bool, force: bool = False):
    """The dataset up to the pixel data (``whole``: every element, else the scan tags), with
    ``pixel_offset``, the file offset of the PixelData element (None without one)."""
    with open(path, "rb") as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True, force=force,
                             **({} if whole else {"specific_tags": _SCAN_TAGS}))
        at = fh.tell()
        head = fh.read(4)
    # pydicom stops with the file at the PixelData tag (7FE0,0010): where a reader finds the pixels.
    return ds, at if head == b"\xe0\x7f\x10\x00" else None


def read_header(path: str, whole: bool = False):
    """The scan tags of one file (``whole``: every element but the pixel data, and ``pixel_offset``), or
    a one-line reason it is not a readable DICOM file.

    Returns:
        ((dataset, pixel_offset), None) or (None, problem).
    """
    try:
        return _parse(path, whole), None
    except InvalidDicomError:
        pass
    except Exception as err:  # pydicom raises many types for damaged files
        return None, f"unreadable DICOM header ({' '.join(str(err).split())[:160]})"
    try:  # old files without the preamble and file meta: accepted when they carry a SOP class and a series
        ds, at = _parse(path, whole, force=True)
        if "SOPClassUID" in ds and "SeriesInstanceUID" in ds:
            return (ds, at), None
    except Exception:  # noqa: BLE001  (anything force-read that fails is simply not DICOM)
        pass
    return None, "not DICOM (no DICM preamble)"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file carries the DICM preamble (128 bytes, then b'DICM')."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def holds_dicom(folder: str | os.PathLike, *, limit: int = 2000) -> bool:
    """True when a DICOM file lies anywhere under ``folder`` (checks at most ``limit`` files)."""
    seen = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.startswith(".") and is_dicom_file(os.path.join(dirpath, name)):
                return True
            seen += 1
            if seen >= limit:
                return False
    return False


def scan_folder(folder: str | os.PathLike, *, keep: bool = False) -> tuple[list[SeriesFiles], list[str]]:
    """Group the image files under ``folder`` (any depth) by series.

    ``keep``: parse each file's every element but the pixel data and keep the datasets (and where each
    file's pixels start) in :attr:`SeriesFiles.datasets`, so a reader parses each file once and reads
    native pixels straight from the file; otherwise only the grouping tags are read.

    Returns:
        (series sorted by UID, notices): a notice is one line naming a file that was set aside and why
        (not DICOM, unreadable header, a non-image object such as SR, RTSTRUCT, SEG or PR), or a series
        made only of LOCALIZER images.
    """
    series: dict[str, SeriesFiles] = {}
    imaging: set[str] = set()  # series with at least one image not marked LOCALIZER
    notices = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = str(Path(dirpath) / name)
            parsed, problem = read_header(path, whole=keep)
            ds, offset = parsed if parsed else (None, None)
            sop = None if problem else ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get(
                "MediaStorageSOPClassUID")  # a DICOMDIR names its class in the file meta only
            if problem is None and sop is None:
                problem = "DICOM without a SOPClassUID"
            if problem is None and (kind := sop_kind(sop)):
                problem = f"{kind}, not an image: skipped"
            if problem is None and ("Rows" not in ds or "SeriesInstanceUID" not in ds):
                problem = "no Rows or SeriesInstanceUID: not an image"
            if problem is not None:
                notices.append(f"{path}: {problem}")
                continue
            uid = str(ds.SeriesInstanceUID)
            entry = series.setdefault(uid, SeriesFiles(uid, str(ds.get("StudyInstanceUID", "")),
                                                       str(ds.get("Modality", "")), str(ds.get("PatientID", ""))))
            entry.files.append(path)
            if keep:
                entry.datasets.append(ds)
                entry.offsets.append(offset)
            if "LOCALIZER" not in [str(v).upper() for v in (ds.get("ImageType") or [])]:
                imaging.add(uid)
    for uid in sorted(set(series) - imaging):  # a series of scouts alone is no volume to learn from
        notices.append(f"{folder}#{uid}: localizer series of {len(series[uid].files)} image(s), skipped")
        del series[uid]
    return [series[k] for k in sorted(series)], notices
