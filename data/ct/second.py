"""A second measurement model of the same geometry, to see what a network learned of the simulator.

The main simulator (data/ct/physics.simulate_oversampled) re-renders each phantom 3x
finer and integrates each detector over its bin. This one measures the same object
another way, as a different scanner model would:

* the object is the ground truth upsampled by pixel replication (edges are steps at
  the truth's resolution), not re-rendered;
* each detector reads the line integrals at its centre by linear interpolation (a
  point detector), not a bin average;
* the detectors are ``pitch`` (1.1) times further apart: round(D / 1.1) of them over
  the same padded diagonal;
* Gaussian noise of the same relative level, from its own seed.

The sinogram is then rebinned onto the geometry's D detectors by bin averages, as the
FBP layer rebins another detector count (data/ct/physics.rebin_matrix), so every
method, FBP, TV, FBPConvNet or LPD, reads it where it reads the main one.
"""

from __future__ import annotations

import numpy as np

from medflow.data.ct.physics import forward, n_detectors, rebin_matrix

PITCH = 1.1


def second_detectors(size: int, pitch: float = PITCH) -> int:
    """The second simulator's detector count over the padded diagonal of a (size, size) image."""
    return int(round(n_detectors(size) / pitch))


def second_sinogram(truth: np.ndarray, angles_deg, rng: np.random.Generator, oversample: int = 3,
                    pitch: float = PITCH, noise: float = 0.025) -> np.ndarray:
    """(S, S) ground truth -> (n_detectors(S), A) float32 sinogram measured by the second model.

    Units are the main simulator's: line integrals in pixel units of the (S, S) grid.
    """
    size = truth.shape[0]
    k = int(oversample)
    fine = np.kron(np.asarray(truth, dtype=np.float64), np.ones((k, k)))
    # The same centring as the main simulator: the fine rotation centre is the coarse one.
    centre = k * (size // 2) + (k - 1) // 2
    extra = 2 * centre + 1 - k * size
    sino_f = forward(np.pad(fine, ((0, extra), (0, extra))), angles_deg) / k  # coarse pixel units
    t_fine = (np.arange(sino_f.shape[0]) - sino_f.shape[0] // 2) / k  # detector position, coarse pixels
    n = n_detectors(size)
    detectors = second_detectors(size, pitch)
    spacing = n / detectors
    t = (np.arange(detectors) + 0.5 - detectors / 2.0) * spacing
    sino = np.stack([np.interp(t, t_fine, sino_f[:, a], left=0.0, right=0.0) for a in range(sino_f.shape[1])], 1)
    sino = sino + noise * float(np.mean(np.abs(sino))) * rng.standard_normal(sino.shape)
    return (rebin_matrix(detectors, size) @ sino).astype(np.float32)


def second_split(truths: np.ndarray, indices: np.ndarray, angles_deg, seed: int, oversample: int = 3,
                 noise: float = 0.025) -> np.ndarray:
    """(N, D, A) second-model sinograms of (N, S, S) truths, image i's noise seeded by (seed, index i)."""
    return np.stack([second_sinogram(t, angles_deg, np.random.default_rng([seed, 7919, int(i)]), oversample,
                                     noise=noise) for t, i in zip(truths, indices)]) if len(truths) else \
        np.zeros((0, n_detectors(truths.shape[1]), len(angles_deg)), np.float32)
