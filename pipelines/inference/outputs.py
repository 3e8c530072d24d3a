"""Reading inference inputs and writing inference outputs, each file atomically.

Shared by ``medflow predict`` and the MLflow pyfunc model, so a file written
from the command line and one written by a served model are the same bytes.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from medflow.data.atomic import write_atomic
from medflow.data.nifti import save_atomic, write_nifti


def read_sinogram(path, shape: tuple[int, int]) -> np.ndarray:
    """A (detectors, angles) float32 sinogram, or ValueError naming the problem."""
    try:
        sino = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001  (any unreadable file is the same one-line problem)
        raise ValueError(f"not a readable .npy array ({type(err).__name__})") from None
    if sino.shape != tuple(shape):
        raise ValueError(f"sinogram shape {sino.shape}, the model expects {tuple(shape)} (detectors, angles)")
    if not np.issubdtype(sino.dtype, np.number) or not np.all(np.isfinite(sino)):
        raise ValueError("sinogram holds non-numeric or non-finite values")
    return sino.astype(np.float32)


def save_npy(path: Path, array: np.ndarray) -> None:
    with write_atomic(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def image_affine(shape: tuple[int, int], geometry: dict) -> np.ndarray:
    """Voxel-to-world matrix of a reconstructed slice: ``pixel_mm`` pixels when the geometry has a
    physical size (CT volumes), else 1-unit pixels; centred on the rotation axis either way."""
    pixel = float(geometry.get("pixel_mm", 1.0))
    affine = np.diag([pixel, pixel, pixel, 1.0])
    affine[:2, 3] = -(np.array(shape, dtype=np.float64) - 1) / 2.0 * pixel
    return affine


def write_reconstruction(folder: Path, name: str, image: np.ndarray, geometry: dict) -> list[Path]:
    """``<name>.npy`` and ``<name>.nii.gz`` of one (S, S) image; never one without the other."""
    folder.mkdir(parents=True, exist_ok=True)
    npy, nii = folder / f"{name}.npy", folder / f"{name}.nii.gz"
    try:
        save_npy(npy, image.astype(np.float32))
        write_nifti(nii, image[..., None].astype(np.float32), image_affine(image.shape, geometry))
    except BaseException:
        npy.unlink(missing_ok=True)
        raise
    return [npy, nii]


def _label_image(labels: np.ndarray, affine: np.ndarray, reference):
    """A nibabel image of ``labels``: the reference file's header and affine when there is one."""
    import nibabel as nib

    from medflow.data.native import image_like

    if reference is not None:
        return image_like(labels, reference, dtype=np.uint8)
    img = nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), np.asarray(affine, dtype=np.float64))
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


def write_labels(path: Path, labels: np.ndarray, affine: np.ndarray, reference=None) -> None:
    """A uint8 label map as NIfTI on the input's grid (the reference's header when given), atomically."""
    save_atomic(_label_image(labels, affine, reference), path)


def label_nifti_bytes(labels: np.ndarray, affine: np.ndarray, reference=None) -> bytes:
    """The gzipped NIfTI bytes of a label map (for answers that travel as text)."""
    img = _label_image(labels, affine, reference)
    return gzip.compress(img.to_bytes(), 6)


def write_csv_atomic(path: Path, frame) -> None:
    with write_atomic(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
