"""From a patient's native grid to the network's grid and back.

:func:`prepare` applies the preprocessing plan to a raw volume exactly as the
preprocess stage did for training, but without a label (at inference time there
is none). :func:`to_native` takes class probabilities made on the preprocessed
grid back through resampling, un-cropping and reorientation, so the result lies
voxel for voxel on the input's own grid. :func:`write_like` writes it with the
input's affine and header.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medflow.data.geometry import same_grid, to_canonical
from medflow.data.nifti import is_nifti_name, save_atomic, write_nifti
from medflow.data.preprocess import PreprocessPlan, preprocess_case


def plan_from_json(plan: dict) -> PreprocessPlan:
    """The :class:`PreprocessPlan` of a ``plan.json`` (extra keys such as classes are ignored)."""
    fields = PreprocessPlan.__dataclass_fields__
    return PreprocessPlan(**{k: tuple(v) if isinstance(v, list) else v for k, v in plan.items() if k in fields})


def prepare(images: list[np.ndarray], affine: np.ndarray, plan: PreprocessPlan) -> tuple[np.ndarray, dict]:
    """Preprocess one unlabelled case.

    Returns:
        (image (C, X', Y', Z') float32 on the plan's grid, meta with every grid it passed through).
    """
    image, _, meta = preprocess_case(images, affine, None, plan)
    return image, meta


def to_native(probs: np.ndarray, meta: dict, *, background: int = 0) -> np.ndarray:
    """Map (X', Y', Z', K) probabilities on the preprocessed grid back to the native grid.

    Linear interpolation per class, then un-cropping (outside the crop box is
    ``background`` with probability 1), then the axis permutation and flips back
    to the native orientation.

    Returns:
        (X, Y, Z, K) float32 on the grid of ``meta['native']``.
    """
    final = np.asarray(meta["affine"], dtype=np.float64)
    canon_affine = np.asarray(meta["canonical"]["affine"], dtype=np.float64)
    canon_shape = tuple(meta["canonical"]["shape"])
    box = meta["crop_box"]
    start = np.array([b[0] for b in box] if box else [0, 0, 0], dtype=np.float64)
    crop_shape = tuple(b[1] - b[0] for b in box) if box else canon_shape
    crop_affine = canon_affine.copy()
    crop_affine[:3, 3] = canon_affine[:3, :3] @ start + canon_affine[:3, 3]
    # Voxel (i, j, k) of the crop grid sits at this voxel coordinate of the preprocessed grid.
    m = np.linalg.inv(final) @ crop_affine
    if not np.allclose(m[:3, :3], np.diag(np.diag(m[:3, :3])), atol=1e-6):
        raise ValueError("preprocessed and native grids are not axis-aligned; meta does not come from prepare()")
    k = probs.shape[-1]
    canon = np.zeros((*canon_shape, k), dtype=np.float32)
    canon[..., background] = 1.0
    inner = tuple(slice(b[0], b[1]) for b in box) if box else (slice(None),) * 3
    for c in range(k):
        if tuple(probs.shape[:3]) == crop_shape and np.allclose(m, np.eye(4), atol=1e-6):
            canon[(*inner, c)] = probs[..., c]
        else:
            canon[(*inner, c)] = ndimage.affine_transform(
                probs[..., c].astype(np.float32, copy=False), np.diag(m[:3, :3]), offset=m[:3, 3],
                output_shape=crop_shape, order=1, mode="nearest")
    native = meta["native"]
    out, affine = to_canonical(canon, canon_affine, codes=native["axcodes"])
    if not same_grid(affine, out.shape, np.asarray(native["affine"]), native["shape"]):
        raise ValueError("mapping back did not land on the native grid")
    return out


def image_like(data: np.ndarray, reference: str | os.PathLike, *, dtype=np.uint8):
    """A nibabel image of ``data`` with the affine and header of ``reference``.

    The reference's sform/qform, codes, units and description are kept; data type
    and scaling are set for the new data (a label map is stored as integers, unscaled).
    """
    ref = nib.load(str(reference))
    if tuple(data.shape[:3]) != tuple(ref.shape[:3]):
        raise ValueError(f"data shape {data.shape} does not match {reference} {ref.shape}")
    header = ref.header.copy()
    header.set_data_dtype(dtype)
    img = type(ref)(np.asarray(data, dtype=dtype), ref.affine, header=header)
    img.header.set_slope_inter(1.0, 0.0)  # the values are the data: no rescaling inherited from the input
    return img


def write_like(path: str | os.PathLike, data: np.ndarray, reference: str | os.PathLike, *,
               dtype=np.uint8, affine: np.ndarray | None = None) -> None:
    """Write ``data`` as NIfTI with the affine and header of ``reference`` (atomically: temp file, rename).

    A reference that is no NIfTI file (a DICOM series) has no header to keep: the data is written with
    ``affine``, the grid the series was read on.
    """
    if not is_nifti_name(reference):
        if affine is None:
            raise ValueError(f"{path}: {reference} is not a NIfTI file; its grid's affine is needed")
        write_nifti(path, data, affine, dtype=dtype)
        return
    try:
        img = image_like(data, reference, dtype=dtype)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    save_atomic(img, Path(path))
