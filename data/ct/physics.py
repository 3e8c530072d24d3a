"""2D parallel-beam CT: measurement simulation and filtered back-projection.

Geometry is scikit-image's: ``radon(image, theta, circle=False)`` pads the image to
its diagonal and returns a (detectors, angles) sinogram of line integrals in pixel
units; detector ``P // 2`` sees the ray through pixel (size // 2, size // 2).
Angles are in degrees.

Two sources of measurements:

* Ellipse phantoms (:func:`simulate_oversampled`): the sinogram is computed from
  the same object rendered ``k`` times finer and binned onto the reconstruction
  detector grid, so the forward model of the data is not the one the
  reconstruction inverts (the "inverse crime"). Then additive Gaussian noise with
  sigma a fraction of the mean absolute sinogram value (:func:`add_gaussian_noise`).
* Users' CT slices in HU (:func:`simulate_hu_slice`): HU -> linear attenuation,
  line integrals in units of attenuation length, resampled to a chosen detector
  count, with Poisson photon-count noise.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.transform import radon

from medflow.data.ct.fbp import fbp

MU_WATER_PER_MM = 0.0192  # water at about 70 keV (0.192 / cm)


def midpoint_angles(n: int, span_deg: float = 180.0) -> np.ndarray:
    """(n,) angles at the midpoints (k + 1/2) * span / n, in degrees (n = 30: 3, 9, ..., 177)."""
    if n < 1:
        raise ValueError(f"need at least one angle, got {n}")
    return (np.arange(n) + 0.5) * (span_deg / n)


def n_detectors(size: int) -> int:
    """Detector count of ``radon(size x size image, circle=False)``: the padded diagonal."""
    return size + int(math.ceil(math.sqrt(2.0) * size - size))


MATRIX_MAX_ENTRIES = 40_000_000  # about 480 MB of CSR: beyond this, scikit-image's radon itself


def forward(image: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """(size, size) image -> (n_detectors(size), angles) sinogram, scikit-image's ``radon(circle=False)``.

    Through the geometry's sparse matrix (data/ct/projector.py, equal to ``radon`` to 1e-14 and 15x
    faster once built, which a dataset build amortizes over its samples) where it fits in memory.
    """
    from medflow.data.ct.projector import project

    image = np.asarray(image, dtype=np.float64)
    angles = np.asarray(angles_deg, dtype=np.float64)
    if 2.5 * n_detectors(image.shape[0]) * image.shape[0] * len(angles) <= MATRIX_MAX_ENTRIES:
        return project(image, angles)
    return radon(image, theta=angles, circle=False)


def simulate_oversampled(fine: np.ndarray, size: int, angles_deg: np.ndarray) -> np.ndarray:
    """Sinogram on the ``size`` detector grid, measured from a ``k`` times finer image of the same object.

    Args:
        fine: (k * size, k * size) image, k odd (3 or more to avoid the inverse crime).
        size: reconstruction grid.
        angles_deg: (A,) projection angles.

    Returns:
        (n_detectors(size), A) float64 line integrals in coarse pixel units. Each coarse
        detector is the mean of the k fine detectors it covers (an integrating detector).
    """
    k, rem = divmod(fine.shape[0], size)
    if rem or fine.shape != (k * size, k * size) or k % 2 == 0:
        raise ValueError(f"fine image {fine.shape} is not an odd multiple of {size} on both axes")
    # Pad so the fine rotation centre (index S // 2) is the coarse one's centre point:
    # fine pixel c_f has coarse coordinate (c_f + 1/2) / k - 1/2 = size // 2.
    c_f = k * (size // 2) + (k - 1) // 2
    extra = 2 * c_f + 1 - k * size
    padded = np.pad(fine, ((0, extra), (0, extra)))
    sino_f = forward(padded, angles_deg)
    n_c = n_detectors(size)
    centre_f, centre_c = sino_f.shape[0] // 2, n_c // 2
    offsets = np.arange(-(k - 1) // 2, (k - 1) // 2 + 1)
    idx = centre_f + k * (np.arange(n_c) - centre_c)[:, None] + offsets[None, :]  # (n_c, k)
    # Beyond the padded diagonal every ray misses the object: zero line integrals.
    lo = max(0, -int(idx.min()))
    hi = max(0, int(idx.max()) - (sino_f.shape[0] - 1))
    sino_f = np.pad(sino_f, ((lo, hi), (0, 0)))
    return sino_f[idx + lo].sum(axis=1) / (k * k)


def add_gaussian_noise(sinogram: np.ndarray, rng: np.random.Generator, relative_sigma: float = 0.025) -> np.ndarray:
    """Additive white Gaussian noise, sigma = relative_sigma * mean(|sinogram|) (DIVal: 0.025)."""
    sigma = relative_sigma * float(np.mean(np.abs(sinogram)))
    return sinogram + sigma * rng.standard_normal(sinogram.shape)


def _rebin(values: np.ndarray, src_edges: np.ndarray, dst_edges: np.ndarray) -> np.ndarray:
    """Bin averages of a piecewise-constant profile (bins x columns) on new bin edges (zero outside)."""
    cum = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values * np.diff(src_edges)[:, None], 0)])
    at = np.stack([np.interp(dst_edges, src_edges, cum[:, j]) for j in range(values.shape[1])], axis=1)
    return np.diff(at, axis=0) / np.diff(dst_edges)[:, None]


def _skimage_edges(n: int) -> np.ndarray:
    """Detector bin edges of scikit-image's grid (pitch 1 pixel, centre at index n // 2)."""
    return np.arange(n + 1) - 0.5 - n // 2


def _centred_edges(n: int, pitch: float) -> np.ndarray:
    return (np.arange(n + 1) - n / 2.0) * pitch


def hu_to_mu(hu: np.ndarray, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """HU -> linear attenuation per mm, mu = mu_water * (1 + HU / 1000), clipped at 0 (air)."""
    return np.clip(mu_water * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0), 0.0, None)


def simulate_hu_slice(hu: np.ndarray, pixel_mm: float, angles_deg: np.ndarray, detectors: int | None,
                      photons: float | None, rng: np.random.Generator, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """Sinogram of one axial CT slice in HU.

    Args:
        hu: (size, size) slice in HU, square pixels of ``pixel_mm``.
        angles_deg: (A,) projection angles.
        detectors: detector count spread over the padded diagonal (None: one per pixel).
        photons: incident photons per detector bin for Poisson noise (None: noiseless).

    Returns:
        (detectors, A) float64 line integrals of mu (dimensionless), log-converted
        after counting when ``photons`` is set.
    """
    size = hu.shape[0]
    if hu.ndim != 2 or hu.shape[1] != size:
        raise ValueError(f"a CT slice must be square, got {hu.shape}")
    sino = forward(hu_to_mu(hu, mu_water) * pixel_mm, angles_deg)
    n = sino.shape[0]
    if detectors is not None and detectors != n:
        sino = _rebin(sino, _skimage_edges(n), _centred_edges(detectors, n / detectors))
    if photons is not None:
        if photons <= 0:
            raise ValueError(f"photon count must be positive, got {photons}")
        counts = rng.poisson(photons * np.exp(-sino))
        # A ray with no photon left is read as half a photon, as scanners floor their log input.
        sino = -np.log(np.maximum(counts, 0.5) / photons)
    return sino


def rebin_detectors_matrix(n: int, detectors: int) -> np.ndarray:
    """(detectors, n) bin-average map from scikit-image's grid of ``n`` one-pixel bins to a centred grid
    of ``detectors`` bins spanning the same width (what :func:`simulate_hu_slice` does to a sinogram)."""
    return _rebin(np.eye(n), _skimage_edges(n), _centred_edges(detectors, n / detectors))


def rebin_matrix(detectors: int, size: int) -> np.ndarray:
    """(n_detectors(size), detectors) map from a centred grid of ``detectors`` bins spanning the padded
    diagonal (:func:`simulate_hu_slice` with a detector count) to scikit-image's one-per-pixel grid."""
    n = n_detectors(size)
    return _rebin(np.eye(detectors), _centred_edges(detectors, n / detectors), _skimage_edges(n))


def fbp_geometry(sinogram: np.ndarray, geometry: dict, filter_name: str | None = None,
                 frequency_scaling: float | None = None) -> np.ndarray:
    """FBP in the training images' units for a stored geometry (data/ct/ellipses or data/ct/volumes).

    Rebins a sinogram whose detector count differs from one per pixel, then applies
    ``fbp_scale`` and ``fbp_offset`` (HU for CT volumes). Filter and scaling default to the geometry's.
    """
    size = geometry["image_size"]
    if sinogram.shape[0] != n_detectors(size):
        sinogram = rebin_matrix(sinogram.shape[0], size) @ sinogram
    image = fbp(sinogram, geometry["angles_deg"], size, filter_name or geometry["fbp_filter"],
                geometry.get("frequency_scaling", 1.0) if frequency_scaling is None else frequency_scaling)
    return (image * geometry.get("fbp_scale", 1.0) + geometry.get("fbp_offset", 0.0)).astype(np.float32)


def fbp_hu(sinogram: np.ndarray, angles_deg: np.ndarray, size: int, pixel_mm: float, filter_name: str = "ramp",
           mu_water: float = MU_WATER_PER_MM, frequency_scaling: float = 1.0) -> np.ndarray:
    """Inverse of :func:`simulate_hu_slice` (up to noise and resolution): a (size, size) slice in HU."""
    scale, offset = hu_scale(pixel_mm, mu_water)
    return fbp_geometry(sinogram, {"image_size": size, "angles_deg": list(angles_deg), "fbp_filter": filter_name,
                                   "frequency_scaling": frequency_scaling, "fbp_scale": scale, "fbp_offset": offset})


def hu_scale(pixel_mm: float, mu_water: float = MU_WATER_PER_MM) -> tuple[float, float]:
    """(scale, offset) taking an FBP of :func:`simulate_hu_slice` sinograms to HU: HU = scale * fbp + offset."""
    return 1000.0 / (pixel_mm * mu_water), -1000.0
