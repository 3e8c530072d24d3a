"""The parallel-beam ray transform as one sparse matrix, exactly scikit-image's ``radon(circle=False)``.

``radon`` pads the image to its diagonal, rotates it by each angle with bilinear
interpolation and sums the columns. Every step is linear in the image, so for a
(S, S) image the whole transform is a fixed (D * A, S * S) matrix with
D = n_detectors(S): row ``d * A + a`` (the flattened (D, A) sinogram) holds, for
the ray of detector d at angle a, the bilinear weights of the S * S pixels summed
along it (about 2.3 S non-zeros per row). Built once per geometry, it gives the
forward operator A and its exact adjoint A^T (the transpose) to the Keras layer
(models/projector.py), to the TV baseline and to the simulation.

Another detector count than one per pixel (the HU CT geometry of
data/ct/physics.simulate_hu_slice) is the same matrix followed by its bin-average
rebinning, so a geometry's operator and its simulator agree.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.sparse as sp

from medflow.data.ct.physics import n_detectors, rebin_detectors_matrix


def _angle_entries(size: int, theta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(detector, pixel, weight) entries of one angle's projection, duplicates not yet summed.

    Follows scikit-image's ``radon``: the output pixel (r, c) of the rotated padded image
    reads the padded input at x = cos c + sin r - m (cos + sin - 1), y = -sin c + cos r - m (cos - sin - 1)
    with m the padded centre, bilinearly, zero outside; detector c sums column c.
    """
    p = n_detectors(size)
    pad = p - size
    before = (size + pad) // 2 - size // 2  # scikit-image's pad_before, the same on both axes
    m = p // 2
    cos, sin = np.cos(theta), np.sin(theta)
    r, c = np.mgrid[:p, :p].astype(np.float64)
    x = cos * c + sin * r - m * (cos + sin - 1) - before  # column in the unpadded image
    y = -sin * c + cos * r - m * (cos - sin - 1) - before  # row in the unpadded image
    r0, c0 = np.floor(y), np.floor(x)
    dr, dc = y - r0, x - c0
    detector = np.broadcast_to(c, r.shape)
    rows, cols, weights = [], [], []
    for oy, ox, w in ((0, 0, (1 - dr) * (1 - dc)), (0, 1, (1 - dr) * dc), (1, 0, dr * (1 - dc)), (1, 1, dr * dc)):
        rr, cc = r0 + oy, c0 + ox
        keep = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size) & (w > 0)
        rows.append(detector[keep].astype(np.int64))
        cols.append((rr[keep] * size + cc[keep]).astype(np.int64))
        weights.append(w[keep])
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)


@lru_cache(maxsize=8)
def ray_transform(size: int, angles_deg: tuple, detectors: int | None = None) -> sp.csr_matrix:
    """(detectors * A, S * S) float64 CSR matrix: sinogram.ravel() = M @ image.ravel().

    Args:
        size: S, the image is (S, S) in scikit-image's array order.
        angles_deg: (A,) projection angles in degrees, as a tuple (the cache key).
        detectors: detector count spread over the padded diagonal; None or n_detectors(S) is
            scikit-image's grid (pitch 1 pixel), another count is bin-averaged onto it.

    The sinogram is (detectors, A), flattened row-major: row = d * A + a.
    """
    n = n_detectors(size)
    n_angles = len(angles_deg)
    rows, cols, weights = [], [], []
    for a, angle in enumerate(np.deg2rad(np.asarray(angles_deg, dtype=np.float64))):
        d, pix, w = _angle_entries(size, float(angle))
        rows.append(d * n_angles + a)
        cols.append(pix)
        weights.append(w)
    matrix = sp.coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                           shape=(n * n_angles, size * size)).tocsr()  # sums duplicate (ray, pixel) pairs
    if detectors is not None and detectors != n:
        rebin = sp.csr_matrix(rebin_detectors_matrix(n, detectors))  # (detectors, n)
        matrix = (sp.kron(rebin, sp.identity(n_angles, format="csr")) @ matrix).tocsr()
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return matrix


def operator_norm(matrix: sp.spmatrix, iterations: int = 100, seed: int = 0) -> float:
    """||A||_2 by power iteration on A^T A (ODL's ``power_method_opnorm``), to about 1e-6 relative."""
    x = np.random.default_rng(seed).standard_normal(matrix.shape[1])
    norm = 0.0
    for _ in range(iterations):
        x /= np.linalg.norm(x)
        y = matrix.T @ (matrix @ x)
        previous, norm = norm, float(np.sqrt(np.linalg.norm(y)))
        x = y
        if abs(norm - previous) <= 1e-7 * norm:
            break
    return norm


def row_buckets(matrix: sp.csr_matrix, buckets: int = 4) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The matrix as gather tables, rows grouped by length so that little of each table is padding.

    Returns:
        ``buckets`` (or fewer) tuples (rows (R,) int32, index (R, K) int32, weight (R, K) float32): for
        the listed rows, ``(M @ x)[rows] = sum(x[index] * weight, -1)``; a bucket's K is its longest row,
        shorter rows are padded with weight 0 at column 0. Rows sorted by length, split in equal parts.
    """
    counts = np.diff(matrix.indptr)
    order = np.argsort(counts, kind="stable")
    out = []
    for rows in np.array_split(order, buckets):
        if rows.size == 0:
            continue
        k = max(int(counts[rows].max()), 1)
        index = np.zeros((rows.size, k), dtype=np.int32)
        weight = np.zeros((rows.size, k), dtype=np.float32)
        for i, r in enumerate(rows):
            lo, hi = matrix.indptr[r], matrix.indptr[r + 1]
            index[i, : hi - lo] = matrix.indices[lo:hi]
            weight[i, : hi - lo] = matrix.data[lo:hi]
        out.append((rows.astype(np.int32), index, weight))
    return out


def project(image: np.ndarray, angles_deg, detectors: int | None = None) -> np.ndarray:
    """(S, S) image -> (D, A) float64 sinogram, as ``radon(image, angles, circle=False)`` (rebinned to
    ``detectors`` if given)."""
    size = image.shape[0]
    matrix = ray_transform(size, tuple(float(a) for a in angles_deg), detectors)
    return (matrix @ np.asarray(image, dtype=np.float64).ravel()).reshape(-1, len(angles_deg))
