"""Measurement-model augmentation: perturb a training sinogram as another scanner model would.

A network trained on one simulator learns its quirks (the detector response, the
noise level) and loses PSNR on another (data/ct/second.py). Each training sinogram
can instead be re-measured at random, within ranges, so that no single detector
model is the only one the network sees:

* detector response: a Gaussian blur along the detectors (sigma up to ``detector_px``)
  and a sub-detector shift (up to ``detector_px / 2``), linear interpolation;
* noise level: extra white noise so that the total is ``factor`` (1 to ``noise_max``)
  times the simulated level.

The draw (:func:`draw_measurement`) is kept apart from the application
(:func:`perturb_sinogram`), and both are pure: the trainer seeds the draw by
(seed, epoch, batch, sample), so a resumed run sees the same perturbations.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def draw_measurement(rng: np.random.Generator, detector_px: float, noise_max: float) -> dict:
    """One sample's perturbation: {blur (detector px), shift (detector px), noise_factor (>= 1)}."""
    return {"blur": float(rng.uniform(0.0, detector_px)), "shift": float(rng.uniform(-0.5, 0.5) * detector_px),
            "noise_factor": float(rng.uniform(1.0, max(noise_max, 1.0))), "noise_seed": int(rng.integers(2**31))}


def perturb_sinogram(sinogram: np.ndarray, draw: dict, relative_noise: float) -> np.ndarray:
    """(D, A) sinogram -> (D, A) float32, re-measured by ``draw``.

    ``relative_noise`` is the simulated noise level (sigma / mean |sinogram|, simulate.noise): the
    extra noise brings the total to ``noise_factor`` times it.
    """
    out = np.asarray(sinogram, dtype=np.float64)
    if draw["blur"] > 0:
        out = ndimage.gaussian_filter1d(out, draw["blur"], axis=0, mode="constant")
    if draw["shift"]:
        out = ndimage.shift(out, (draw["shift"], 0.0), order=1, mode="constant")
    extra = relative_noise * float(np.mean(np.abs(out))) * np.sqrt(max(draw["noise_factor"] ** 2 - 1.0, 0.0))
    if extra > 0:
        out = out + extra * np.random.default_rng(draw["noise_seed"]).standard_normal(out.shape)
    return out.astype(np.float32)
