"""De-identified ids for DICOM cases.

A series folder's name is often the patient's name, and UIDs can be traced back to
a study at the site that made them. Case and patient ids are therefore salted
hashes: stable for one salt (so stage keys and resumes hold), different per salt
(so two sites' ids do not match unless they share one).
"""

from __future__ import annotations

import hashlib

ID_DIGITS = 12


def _digest(salt: str, *parts: str) -> str:
    h = hashlib.sha256(salt.encode("utf-8"))
    for part in parts:
        h.update(b"\0" + part.encode("utf-8"))
    return h.hexdigest()[:ID_DIGITS]


def case_id(series_uid: str, salt: str = "") -> str:
    """``dcm-<12 hex>`` from the SeriesInstanceUID (globally unique, so the study adds nothing).

    ``medflow predict`` names its outputs with the empty salt, the dataset default, so a series gets
    the same name in a pipeline run and a prediction unless the pipeline sets ``dicom.id_salt``.
    """
    return f"dcm-{_digest(salt, 'series', series_uid)}"


def patient_key(patient_id: str, salt: str = "") -> str:
    """``pt-<12 hex>`` from the PatientID (cases of one patient share it, so splits keep them together)."""
    return f"pt-{_digest(salt, 'patient', patient_id)}"


def is_uid(text: str) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters."""
    return 0 < len(text) <= 64 and all(c.isdigit() or c == "." for c in text) and not text.startswith(".")
