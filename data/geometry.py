"""Voxel grids and their affines: orientation, resampling, cropping.

Every function returns the new array *and* the affine that maps its voxels to
the same world (RAS+ mm) points, so a volume never loses its place in the
patient. Arrays are spatial, shape (X, Y, Z) in voxel-index order; callers loop
over channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nibabel import orientations as ornt
from scipy import ndimage


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each voxel axis: the column norms of the 3x3 part."""
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)


def axcodes(affine: np.ndarray) -> str:
    """Orientation code such as ``'RAS'`` or ``'LPS'`` (direction each voxel axis points to)."""
    return "".join(ornt.aff2axcodes(affine))


def voxel_to_world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Map voxel indices (N, 3) to world coordinates (N, 3) in mm."""
    ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
    return ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def world_to_voxel(affine: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Map world coordinates (N, 3) in mm to (fractional) voxel indices (N, 3)."""
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
    return xyz @ inv[:3, :3].T + inv[:3, 3]


def to_canonical(
    data: np.ndarray, affine: np.ndarray, codes: str = "RAS", *, contiguous: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Reorder and flip voxel axes so they point along ``codes`` (lossless).

    Args:
        data: (X, Y, Z) array.
        affine: (4, 4) voxel-to-world matrix.
        codes: target orientation, canonical RAS by default.
        contiguous: copy the result into C order. False returns a view (flips and transposes of
            ``data``), for a caller that crops first and copies only what it keeps.

    Returns:
        (data, affine): the reoriented (X', Y', Z') array and its affine.
    """
    current = ornt.io_orientation(affine)
    transform = ornt.ornt_transform(current, ornt.axcodes2ornt(tuple(codes)))
    finish = np.ascontiguousarray if contiguous else np.asarray
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):  # already there
        return finish(data), np.asarray(affine, dtype=np.float64)
    out = ornt.apply_orientation(data, transform)
    new_affine = np.asarray(affine, dtype=np.float64) @ ornt.inv_ornt_aff(transform, data.shape[:3])
    return finish(out), new_affine


def resampled_grid(affine: np.ndarray, shape: Sequence[int], spacing: Sequence[float]):
    """The grid that covers the same field of view as (affine, shape) at ``spacing``.

    The outer voxel *edges* of both grids coincide (as in SimpleITK and
    nnU-Net), so the new voxel i samples old voxel coordinate
    ``(i + 0.5) * scale - 0.5`` with ``scale = new_spacing / old_spacing``.

    Returns:
        (new_affine, new_shape, scale, offset).
    """
    old = voxel_spacing(affine)
    scale = np.asarray(spacing, dtype=np.float64) / old
    new_shape = tuple(max(1, int(round(n / s))) for n, s in zip(shape[:3], scale))
    offset = 0.5 * scale - 0.5
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = offset
    return np.asarray(affine, dtype=np.float64) @ step, new_shape, scale, offset


def resample_to_spacing(
    data: np.ndarray, affine: np.ndarray, spacing: Sequence[float], *, order: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a (X, Y, Z) volume to ``spacing`` mm, keeping its world position.

    Args:
        data: (X, Y, Z) array.
        affine: (4, 4) voxel-to-world matrix (any orientation; direction cosines kept).
        spacing: target voxel size in mm, one per voxel axis.
        order: spline order: 1 (linear) for images, 0 (nearest) for label maps.

    Returns:
        (data, affine): the resampled (X', Y', Z') array, same dtype for order 0 and
        float32 otherwise, and its affine.
    """
    new_affine, new_shape, scale, offset = resampled_grid(affine, data.shape, spacing)
    if np.allclose(scale, 1.0) and tuple(new_shape) == tuple(data.shape[:3]):
        return data, np.asarray(affine, dtype=np.float64)
    if order in (0, 1):
        return _separable_resample(data, new_shape, scale, offset, order), new_affine
    out = ndimage.affine_transform(data.astype(np.float32, copy=False), scale, offset=offset,
                                   output_shape=new_shape, order=order, mode="nearest")
    return out, new_affine


def _separable_resample(data, new_shape, scale, offset, order):
    """Nearest or linear resampling on an axis-aligned grid, one axis at a time.

    Same result as ``ndimage.affine_transform(..., order, mode='nearest')`` for a
    diagonal matrix, but three cheap 1-D passes instead of one 3-D spline pass,
    so it is several times faster on whole volumes.
    """
    # C order first: each pass then takes whole rows or slabs (a take along the fastest axis of a
    # Fortran-ordered NIfTI array is a transposing gather, and the first pass made one anyway).
    out = data if order == 0 else data.astype(np.float32, order="C")
    for axis in range(3):
        coord = np.arange(new_shape[axis]) * scale[axis] + offset[axis]
        n = out.shape[axis]
        if order == 0:
            # round half up, as scipy's order-0 spline does
            out = np.take(out, np.clip(np.floor(coord + 0.5).astype(np.intp), 0, n - 1), axis=axis)
            continue
        coord = np.clip(coord, 0, n - 1)
        lo = np.minimum(np.floor(coord).astype(np.intp), max(n - 2, 0))
        w = (coord - lo).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = -1
        w = w.reshape(shape)
        a = np.take(out, lo, axis=axis)
        b = np.take(out, np.minimum(lo + 1, n - 1), axis=axis)
        # a + (b - a) * w, in place: the same float32 operations without two whole-volume temporaries
        np.subtract(b, a, out=b)
        np.multiply(b, w, out=b)
        out = np.add(a, b, out=a)
    return np.ascontiguousarray(out)


def foreground_bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Bounding box of the true voxels of a (X, Y, Z) mask, grown by ``margin`` voxels.

    Returns:
        A tuple of slices, or None when the mask is empty.
    """
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(max(0, hits[0] - margin)), int(min(mask.shape[axis], hits[-1] + 1 + margin))))
    return tuple(box)


def crop(
    data: np.ndarray, affine: np.ndarray, box: Sequence[slice], *, contiguous: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Crop the spatial axes of (X, Y, Z) ``data`` to ``box``; the affine moves with it.

    ``contiguous=False`` returns a view, for a caller whose next step copies anyway (resampling).
    """
    start = np.array([b.start for b in box], dtype=np.float64)
    new_affine = np.asarray(affine, dtype=np.float64).copy()
    new_affine[:3, 3] = voxel_to_world(affine, start)[0]
    return (np.ascontiguousarray if contiguous else np.asarray)(data[tuple(box)]), new_affine


def same_grid(affine_a, shape_a, affine_b, shape_b, *, atol_mm: float = 1e-3) -> bool:
    """True when two grids have the same shape and their affines agree within ``atol_mm``."""
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and np.allclose(affine_a, affine_b, atol=atol_mm, rtol=0)


def canonical_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing along the R, A, S axes, i.e. after :func:`to_canonical`."""
    axes = ornt.io_orientation(affine)[:, 0].astype(int)
    out = np.empty(3)
    out[axes] = voxel_spacing(affine)
    return out
