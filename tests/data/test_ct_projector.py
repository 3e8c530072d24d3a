"""The ray-transform matrix (data/ct/projector.py) against scikit-image's radon, and its norm."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
from skimage.transform import radon

from medflow.data.ct.physics import MU_WATER_PER_MM, midpoint_angles, n_detectors, simulate_hu_slice
from medflow.data.ct.projector import operator_norm, project, ray_transform, row_buckets


@pytest.mark.parametrize("size,angles", [(32, midpoint_angles(12)), (33, np.array([0.0, 45.0, 90.0, 131.7])),
                                         (64, midpoint_angles(30))])
def test_matrix_equals_radon(size, angles):
    image = np.random.default_rng(size).random((size, size))
    ref = radon(image, theta=angles, circle=False)
    ours = project(image, angles)
    assert ours.shape == ref.shape == (n_detectors(size), len(angles))
    assert np.abs(ours - ref).max() <= 1e-12 * np.abs(ref).max()  # the same arithmetic, summed in another order


def test_another_detector_count_is_the_hu_simulators_rebinning():
    """A geometry with D != n_detectors(S) bins as simulate_hu_slice does, so TV and LPD invert the simulator."""
    hu = np.random.default_rng(1).uniform(-1000, 1000, (32, 32))
    angles = midpoint_angles(10)
    sino = simulate_hu_slice(hu, 2.0, angles, 30, None, np.random.default_rng(0))
    mu = np.clip(MU_WATER_PER_MM * (1 + hu / 1000), 0, None) * 2.0
    matrix = ray_transform(32, tuple(angles), 30)
    assert matrix.shape == (30 * 10, 32 * 32)
    assert np.allclose((matrix @ mu.ravel()).reshape(30, 10), sino, rtol=1e-10, atol=1e-12)


def test_operator_norm_is_the_largest_singular_value():
    matrix = ray_transform(24, tuple(midpoint_angles(8)))
    largest = spla.svds(matrix, k=1, return_singular_vectors=False)[0]
    assert operator_norm(matrix) == pytest.approx(largest, rel=1e-5)


def test_row_buckets_cover_every_row_once_and_reproduce_the_product():
    matrix = ray_transform(20, tuple(midpoint_angles(6)))
    buckets = row_buckets(matrix, 4)
    rows = np.concatenate([r for r, _, _ in buckets])
    assert sorted(rows.tolist()) == list(range(matrix.shape[0]))
    x = np.random.default_rng(2).random(matrix.shape[1])
    out = np.zeros(matrix.shape[0])
    for r, index, weight in buckets:
        out[r] = (x[index] * weight).sum(-1)
    assert np.allclose(out, matrix @ x, rtol=1e-6, atol=1e-6)
    full = max(int(np.diff(matrix.indptr).max()), 1) * matrix.shape[0]
    assert sum(i.size for _, i, _ in buckets) < 0.8 * full  # grouping by length drops most of the padding
