"""Filtered back-projection as two fixed linear maps, shared by the data and the models.

It reproduces scikit-image's ``iradon(..., circle=False, interpolation="linear")``
on the parallel-beam geometry of data/ct/physics.py:

* filtering along the detectors: a (D, D) matrix, built by applying the Fourier
  filter (zero-padded to a power of two, as scikit-image does) to unit vectors;
* back-projection: for each angle and output pixel, linear interpolation between
  two detector bins, as gather indices and weights of shape (A, S * S).

The ramp, Shepp-Logan and cosine filters equal scikit-image's; its Hann and
Hamming windows use N - 1 in the denominator, ours the exact band, a difference
of O(1/N). The dataset's FBP inputs and the Keras layer
(models/ct_ops.FilteredBackprojection) use these same tables, so an exported
model sees exactly the FBP it was trained on.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")


def fourier_filter(size: int, name: str, frequency_scaling: float = 1.0) -> np.ndarray:
    """(size,) frequency response of the FBP filter (Kak & Slaney eq. 61 ramp, times a window).

    ``frequency_scaling`` < 1 cuts frequencies above that fraction of Nyquist and
    stretches the window over the kept band (ODL's convention; DIVal tunes it).
    """
    if name not in FILTERS:
        raise ValueError(f"unknown FBP filter {name!r}; choose from {', '.join(FILTERS)}")
    if not 0.0 < frequency_scaling <= 1.0:
        raise ValueError(f"frequency_scaling must be in (0, 1], got {frequency_scaling}")
    n = np.concatenate((np.arange(1, size / 2 + 1, 2, dtype=int), np.arange(size / 2 - 1, 0, -2, dtype=int)))
    f = np.zeros(size)
    f[0] = 0.25
    f[1::2] = -1 / (np.pi * n) ** 2
    ramp = 2 * np.real(np.fft.fft(f))
    nu = np.abs(np.fft.fftfreq(size)) * 2.0 / frequency_scaling  # 1 at the scaled cut-off
    window = {
        "ramp": np.ones(size),
        "shepp-logan": np.sinc(nu / 2.0),
        "cosine": np.cos(np.pi * nu / 2.0),
        "hamming": 0.54 + 0.46 * np.cos(np.pi * nu),
        "hann": 0.5 + 0.5 * np.cos(np.pi * nu),
    }[name]
    return np.where(nu <= 1.0, ramp * window, 0.0)


def filter_matrix(detectors: int, name: str, frequency_scaling: float = 1.0) -> np.ndarray:
    """(D, D) float64 H with filtered = H @ sinogram, zero padding to max(64, 2^ceil(log2(2D)))."""
    padded = max(64, int(2 ** np.ceil(np.log2(2 * detectors))))
    eye = np.zeros((padded, detectors))
    eye[:detectors] = np.eye(detectors)
    response = fourier_filter(padded, name, frequency_scaling)[:, None]
    return np.real(np.fft.ifft(np.fft.fft(eye, axis=0) * response, axis=0))[:detectors]


def backprojection_tables(detectors: int, size: int, angles_deg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation tables for back-projecting (A, D) onto a (size, size) grid.

    Returns:
        (index (A, S*S) int32 into the flattened (A*D) sinogram, weight_lo, weight_hi
        (A, S*S) float32); bins ``index`` and ``index + 1`` are blended, zero outside.
    """
    radius = size // 2
    xpr, ypr = np.mgrid[:size, :size] - radius
    theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    t = ypr.ravel()[None, :] * np.cos(theta)[:, None] - xpr.ravel()[None, :] * np.sin(theta)[:, None]
    f = t + detectors // 2
    k0 = np.floor(f)
    w = f - k0
    valid = (f >= 0) & (f <= detectors - 1)
    k0 = np.clip(k0, 0, detectors - 2).astype(np.int64)
    w = np.where(f >= detectors - 1, 1.0, w)  # the last bin itself, reached from its left neighbour
    lo = np.where(valid, 1.0 - w, 0.0)
    hi = np.where(valid, w, 0.0)
    index = k0 + detectors * np.arange(len(theta))[:, None]
    return index.astype(np.int32), lo.astype(np.float32), hi.astype(np.float32)


@lru_cache(maxsize=8)
def _tables(detectors: int, size: int, angles_deg: tuple, filter_name: str, frequency_scaling: float):
    """The geometry's matrices, built once per process (a dataset build reuses one geometry)."""
    return (filter_matrix(detectors, filter_name, frequency_scaling),
            *backprojection_tables(detectors, size, angles_deg))


def fbp(sinogram: np.ndarray, angles_deg, size: int, filter_name: str = "hann",
        frequency_scaling: float = 1.0) -> np.ndarray:
    """(D, A) sinogram -> (size, size) float32 FBP image."""
    sinogram = np.asarray(sinogram, dtype=np.float64)
    detectors, n_angles = sinogram.shape
    if n_angles != len(angles_deg):
        raise ValueError(f"sinogram has {n_angles} angles but {len(angles_deg)} were given")
    h, index, lo, hi = _tables(detectors, size, tuple(float(a) for a in angles_deg), filter_name, frequency_scaling)
    filtered = (h @ sinogram).T.ravel()  # (A*D,)
    image = (filtered[index] * lo + filtered[index + 1] * hi).sum(axis=0) * (np.pi / (2 * n_angles))
    return image.reshape(size, size).astype(np.float32)
