"""Affine registration of volumes onto a reference volume (mutual information, via dipy).

Used where voxels of different subjects must be compared position by position: the
normative baseline's z-map (``medflow.models.normative``). Subjects differ by head
position, rotation and size; without alignment a voxel's spread across normal
subjects is dominated by anatomy moving past it, and a lesion is lost in it.

The method is the usual one for same-modality brain MR (FSL FLIRT, ANTs, dipy's own
tutorial): centres of mass, then rigid, then full affine, each maximizing Mattes
mutual information over a two-level pyramid. Volumes share one voxel spacing (they
come from the same preprocessing plan); the spacing makes rotations physical.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np


@contextlib.contextmanager
def _seeded_legacy_random(seed: int):
    """dipy's sparse sampling draws its jitter from NumPy's legacy global generator, with no way to pass
    one in: seed it for the call, then put the caller's state back, so registration is deterministic."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def register_affine(moving: np.ndarray, static: np.ndarray, spacing, *, sampling: float = 0.3,
                    iterations=(100, 30), seed: int = 0) -> np.ndarray:
    """The affine that best aligns ``moving`` (X', Y', Z') onto ``static`` (X, Y, Z).

    Args:
        spacing: voxel size in mm, shared by both volumes.
        sampling: the fraction of voxels the metric samples (dipy's sparse sampling; 1.0 is every voxel).
        iterations: optimizer iterations at the coarse (factor 2) and the full resolution.
        seed: the sampling's seed; the same inputs and seed give the same affine.

    Returns:
        (4, 4) matrix taking static-grid world coordinates (mm) to moving-grid world coordinates, the
        form :func:`warp_affine` takes.
    """
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric, transform_centers_of_mass
    from dipy.align.transforms import AffineTransform3D, RigidTransform3D

    grid = np.diag([*(float(s) for s in spacing), 1.0])
    moving = np.asarray(moving, np.float64)
    static = np.asarray(static, np.float64)
    reg = AffineRegistration(metric=MutualInformationMetric(nbins=32, sampling_proportion=sampling),
                             level_iters=list(iterations), sigmas=[1.0, 0.0], factors=[2, 1], verbosity=0)
    kw = {"static_grid2world": grid, "moving_grid2world": grid}
    logging.getLogger("dipy").setLevel(logging.WARNING)  # one INFO line per pyramid level and case otherwise
    with _seeded_legacy_random(seed):
        start = transform_centers_of_mass(static, grid, moving, grid).affine
        start = reg.optimize(static, moving, RigidTransform3D(), None, starting_affine=start, **kw).affine
        return np.asarray(reg.optimize(static, moving, AffineTransform3D(), None, starting_affine=start,
                                       **kw).affine)


def warp_affine(moving: np.ndarray, shape, matrix: np.ndarray, spacing, *, order: int = 1) -> np.ndarray:
    """``moving`` resampled onto a grid of ``shape`` by ``matrix`` (from :func:`register_affine`).

    Outside the moving volume the result is the moving volume's minimum (its background).

    Returns:
        (X, Y, Z) float32.
    """
    from scipy import ndimage

    scale = np.asarray(spacing, np.float64)
    # world -> voxel on both sides: voxel_moving = S^-1 (M (S voxel_static)) with S the spacing diagonal.
    m = np.asarray(matrix, np.float64)
    lin = (m[:3, :3] * scale[None, :]) / scale[:, None]
    off = m[:3, 3] / scale
    moving = np.asarray(moving, np.float32)
    return ndimage.affine_transform(moving, lin, off, output_shape=tuple(int(s) for s in shape), order=order,
                                    mode="constant", cval=float(moving.min()))


def _align_one(args) -> np.ndarray:
    moving, static, spacing, seed = args
    return warp_affine(moving, static.shape, register_affine(moving, static, spacing, seed=seed), spacing)


def align_all(volumes, static: np.ndarray, spacing, *, workers: int = 1, seed: int = 0) -> list[np.ndarray]:
    """Each of ``volumes`` registered onto and resampled to ``static``'s grid, on ``workers`` processes.

    Returns:
        one (X, Y, Z) float32 array per volume, in order.
    """
    jobs = [(np.asarray(v, np.float32), np.asarray(static, np.float32), tuple(spacing), seed) for v in volumes]
    if workers <= 1 or len(jobs) <= 1:
        return [_align_one(j) for j in jobs]
    from concurrent.futures import ProcessPoolExecutor

    from medflow.data.workers import process_context

    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=process_context()) as pool:
        return list(pool.map(_align_one, jobs))
