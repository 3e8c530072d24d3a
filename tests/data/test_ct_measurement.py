"""Measurement-model augmentation (data/ct/measurement.py): seeded draws, pure application, the noise it adds."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.data.ct.measurement import draw_measurement, perturb_sinogram


def test_draws_are_seeded_and_within_their_ranges():
    draws = [draw_measurement(np.random.default_rng([0, i]), 0.5, 2.0) for i in range(200)]
    assert draws[3] == draw_measurement(np.random.default_rng([0, 3]), 0.5, 2.0)
    assert all(0 <= d["blur"] <= 0.5 and abs(d["shift"]) <= 0.25 and 1 <= d["noise_factor"] <= 2 for d in draws)
    assert np.std([d["shift"] for d in draws]) > 0.1


def test_identity_draw_changes_nothing_and_noise_reaches_its_factor():
    rng = np.random.default_rng(1)
    sino = rng.random((60, 8)) + 1.0
    same = {"blur": 0.0, "shift": 0.0, "noise_factor": 1.0, "noise_seed": 0}
    assert np.allclose(perturb_sinogram(sino, same, 0.025), sino, atol=1e-6)
    noisy = perturb_sinogram(np.ones((4000, 8)), {**same, "noise_factor": 2.0}, 0.025)
    assert noisy.std() == pytest.approx(0.025 * np.sqrt(3.0), rel=0.05)  # total sqrt(1 + 3) = 2x the simulated


def test_blur_and_shift_act_along_the_detectors_only():
    sino = np.zeros((41, 3))
    sino[20] = 1.0
    out = perturb_sinogram(sino, {"blur": 1.0, "shift": 0.5, "noise_factor": 1.0, "noise_seed": 0}, 0.025)
    assert np.allclose(out.sum(axis=0), 1.0, atol=1e-5)  # mass kept, per angle
    centre = (out[:, 0] * np.arange(41)).sum() / out[:, 0].sum()
    assert centre == pytest.approx(20.5, abs=1e-3) and np.allclose(out[:, 0], out[:, 2])
