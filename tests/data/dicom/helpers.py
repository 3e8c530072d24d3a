"""Synthetic DICOM series of known geometry, and ways to damage them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid
from scipy.spatial.transform import Rotation

from medflow.data.dicom.write import write_series

PATIENT_NAME = "Zyxwvut^Quirinus"  # a name no other file holds: the de-identification test greps for it


def affine(spacing=(0.8, 0.9, 2.5), rotation=(0.0, 0.0, 0.0), origin=(12.0, -30.0, 45.0), perm=(0, 1, 2)):
    """A voxel -> RAS affine: axis i along world axis perm[i] (signs via rotation), scaled by spacing."""
    base = np.zeros((3, 3))
    for i, p in enumerate(perm):
        base[p, i] = 1.0
    if np.linalg.det(base) < 0:
        base[:, 2] *= -1
    a = np.eye(4)
    a[:3, :3] = Rotation.from_euler("xyz", rotation, degrees=True).as_matrix() @ base @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def volume(shape=(12, 10, 6), seed=0, low=-1000, high=2000):
    """Random integer-valued float32 data: every voxel differs, so any flip or shift shows."""
    return np.random.default_rng(seed).integers(low, high, shape).astype(np.float32)


def series(folder, data=None, aff=None, **kw) -> list[str]:
    """Write a series (defaults: 12x10x6 CT, oblique-free axial) and return its files in slice order."""
    data = volume() if data is None else data
    aff = affine() if aff is None else aff
    kw.setdefault("modality", "CT")
    kw.setdefault("patient_name", PATIENT_NAME)
    return write_series(folder, data, aff, **kw)


def edit(path, **attrs) -> None:
    """Set attributes of one file in place (e.g. ImagePositionPatient)."""
    ds = pydicom.dcmread(path)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path)


def duplicate(path, new_name: str) -> str:
    """A copy of a slice with its own SOPInstanceUID (same position)."""
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dest = str(Path(path).with_name(new_name))
    ds.save_as(dest)
    return dest
