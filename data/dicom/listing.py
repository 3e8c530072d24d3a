"""DICOM series as dataset cases: one case per image series under a listed folder.

A dataset entry (a CSV row's ``path``, an MSD ``image``) may name a folder of
DICOM files instead of a NIfTI file. :func:`series_cases` reads the folder's
headers (no pixels) and returns one case per image series, with a de-identified
case id and patient key. The image reference of each is ``folder#SeriesInstanceUID``,
so a folder holding several series is split into them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from medflow.data.dicom.ids import case_id, patient_key
from medflow.data.dicom.scan import scan_folder

MODALITY_CHANNEL = {"CT": "CT", "MR": "MRI", "PT": "PET"}


@dataclass
class SeriesCase:
    """One series found under a listed folder.

    Attributes:
        case_id: ``dcm-<hash>`` of the SeriesInstanceUID (salted).
        ref: ``folder#SeriesInstanceUID``, what the readers take.
        patient: ``pt-<hash>`` of the PatientID, or the PatientID itself with ``log_identifiers``.
        modality: the channel name of the header's Modality ('CT', 'MRI', ...).
    """

    case_id: str
    ref: str
    patient: str
    modality: str


def series_cases(folder: str, *, salt: str = "", log_identifiers: bool = False) -> list[SeriesCase]:
    """The image series under ``folder`` as cases (empty when it holds none)."""
    series, _ = scan_folder(folder)  # what it sets aside, ingest's reader reports per case
    out = []
    for s in series:
        patient = s.patient_id if log_identifiers else patient_key(s.patient_id, salt)
        out.append(SeriesCase(case_id(s.uid, salt), f"{folder}#{s.uid}", patient,
                              MODALITY_CHANNEL.get(s.modality.upper(), s.modality.upper() or "MRI")))
    return out


def expand_dicom(case, salt: str, log_identifiers: bool, one_series: bool) -> list:
    """A listed case (a layouts.CaseEntry) whose image is a folder: one case per DICOM image series under
    it (the case itself when its image is a file or it already has an error). ``one_series``: a label or
    mask covers one series only. The patient is the entry's, else the series' (hashed) PatientID."""
    if case.error or len(case.images) != 1 or not os.path.isdir(case.images[0]):
        return [case]
    found = series_cases(case.images[0], salt=salt, log_identifiers=log_identifiers)
    if not found:
        case.error = "no DICOM image series in the folder"
        return [case]
    if one_series and len(found) > 1:
        case.error = f"the folder holds {len(found)} image series and its label covers one; split the folder"
        return [case]
    return [replace(case, case_id=s.case_id, images=[s.ref], patient_id=case.patient_id or s.patient,
                    source=f"{case.source}#{s.ref.rpartition('#')[2]}", modality=s.modality) for s in found]


def check_modality(cases: list, channel: str | None) -> None:
    """A DICOM case whose header's modality is not the dataset's channel gets an error."""
    if channel is None:
        return
    want = "MRI" if channel.upper() in ("MR", "MRI") else channel.upper()
    for case in cases:
        if case.modality and not case.error and case.modality != want:
            case.error = f"modality {case.modality} in the DICOM header, the dataset's channel is {channel}"
