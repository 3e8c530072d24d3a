"""Ellipse phantoms and the parallel-beam CT physics (data/ct)."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.data.ct.phantoms import MAX_ELLIPSES, draw_ellipses, normalization, phantom, phantom_seed, render_ellipses
from medflow.data.ct.physics import (
    add_gaussian_noise,
    fbp,
    fbp_hu,
    forward,
    midpoint_angles,
    n_detectors,
    simulate_hu_slice,
    simulate_oversampled,
)

ANGLES = midpoint_angles(30)


def _disc(size: int, centre=(0.3, -0.2), radius=0.35) -> np.ndarray:
    """A unit disc on [-1, 1]^2 as a one-ellipse phantom (value, a1, a2, x, y, rotation)."""
    return render_ellipses(np.array([[1.0, radius, radius, centre[0], centre[1], 0.0]]), size)


def test_angles_are_midpoints_of_six_degree_steps():
    assert np.allclose(ANGLES[:3], [3.0, 9.0, 15.0]) and ANGLES[-1] == pytest.approx(177.0)
    assert n_detectors(128) == forward(np.zeros((128, 128)), ANGLES).shape[0] == 182


def test_phantom_statistics_follow_the_dival_recipe():
    rng = np.random.default_rng(0)
    draws = [draw_ellipses(rng) for _ in range(3000)]
    counts = np.array([len(e) for e in draws])
    assert counts.mean() == pytest.approx(40.0, abs=0.4)  # Poisson(40): sd of the mean 0.12
    assert counts.max() <= MAX_ELLIPSES
    rows = np.concatenate(draws)
    assert rows[:, 0].min() >= -0.4 and rows[:, 0].max() <= 1.0
    assert rows[:, 1].mean() == pytest.approx(0.2, rel=0.03)  # 0.2 * Exp(1)
    assert np.abs(rows[:, 3:5]).max() <= 0.9
    assert rows[:, 5].min() >= 0 and rows[:, 5].max() <= 2 * np.pi


def test_phantom_is_normalized_and_the_fine_grid_shows_the_same_object():
    gt, fine = phantom(draw_ellipses(np.random.default_rng(phantom_seed(0, "test", 3))), 128, 3)
    assert gt.shape == (128, 128) and gt.dtype == np.float32
    assert gt.min() == pytest.approx(0.0, abs=1e-6) and gt.max() == pytest.approx(1.0)
    coarse_of_fine = fine.reshape(128, 3, 128, 3).mean(axis=(1, 3))
    # Same object: the fine image averaged to the coarse grid differs only along ellipse edges.
    assert np.mean(np.abs(coarse_of_fine - gt) > 0.05) < 0.15
    assert np.abs(coarse_of_fine - gt).mean() < 0.02


def test_normalization_shifts_only_non_zero_pixels_by_a_negative_minimum():
    image = np.array([[0.0, -0.4, 0.6], [0.0, 0.2, 0.0]])
    shift, scale = normalization(image)
    assert (shift, scale) == (pytest.approx(-0.4), pytest.approx(1.0))
    assert np.array_equal(phantom(np.zeros((0, 6)), 16)[0], np.zeros((16, 16), np.float32))


def test_seeds_are_fixed_per_split_and_index():
    a = draw_ellipses(np.random.default_rng(phantom_seed(0, "train", 5)))
    assert np.array_equal(a, draw_ellipses(np.random.default_rng(phantom_seed(0, "train", 5))))
    assert not np.array_equal(a, draw_ellipses(np.random.default_rng(phantom_seed(0, "test", 5))))


def _centre_of_mass(sino: np.ndarray) -> np.ndarray:
    t = np.arange(sino.shape[0])[:, None]
    return (t * sino).sum(0) / sino.sum(0)


def test_oversampled_measurement_lines_up_with_the_reconstruction_grid():
    fine = _disc(384)
    measured = simulate_oversampled(fine, 128, ANGLES)
    reference = forward(_disc(128), ANGLES)
    assert measured.shape == reference.shape == (182, 30)
    # The disc's projected centre agrees to a small fraction of a pixel at every angle
    # (a misregistered fine grid would be off by 1/3 pixel).
    assert np.abs(_centre_of_mass(measured) - _centre_of_mass(reference)).max() < 0.05
    # Line integrals in coarse pixel units: the mass (disc area in pixels) is preserved.
    area = np.pi * (0.35 * 64) ** 2
    assert measured.sum(0) == pytest.approx(np.full(30, area), rel=0.01)
    assert not np.allclose(measured, reference)  # a different forward model: no inverse crime
    with pytest.raises(ValueError, match="odd multiple"):
        simulate_oversampled(np.zeros((256, 256)), 128, ANGLES)


def test_gaussian_noise_is_a_fixed_fraction_of_the_mean_absolute_sinogram():
    clean = forward(_disc(128), midpoint_angles(300))
    noise = add_gaussian_noise(clean, np.random.default_rng(1)) - clean
    assert noise.std() == pytest.approx(0.025 * np.abs(clean).mean(), rel=0.02)
    assert abs(noise.mean()) < 0.1 * noise.std()


def test_fbp_recovers_a_disc_and_rejects_unknown_filters():
    image = _disc(128)
    recon = fbp(forward(image, midpoint_angles(180)), midpoint_angles(180), 128, "ramp")
    assert recon.shape == (128, 128)
    inside = image > 0
    assert np.abs(recon[inside].mean() - 1.0) < 0.03
    assert np.abs(recon[~inside]).mean() < 0.03
    with pytest.raises(ValueError, match="unknown FBP filter"):
        fbp(np.zeros((182, 30)), ANGLES, 128, "box")


def _water_cylinder(size=96, pixel_mm=2.0) -> np.ndarray:
    x = (np.arange(size) - size / 2 + 0.5) * pixel_mm
    r = np.hypot(x[:, None] - 10.0, x[None, :])
    return np.where(r < 50.0, 0.0, -1000.0)


@pytest.mark.parametrize("detectors", [None, 200])
def test_hu_slice_round_trips_through_line_integrals_and_fbp(detectors):
    hu = _water_cylinder()
    angles = midpoint_angles(180)
    sino = simulate_hu_slice(hu, 2.0, angles, detectors, None, np.random.default_rng(0))
    assert sino.shape == (detectors or n_detectors(96), 180)
    # The longest chord through 100 mm of water: mu * 100 mm.
    assert sino.max() == pytest.approx(0.0192 * 100.0, rel=0.03)
    recon = fbp_hu(sino, angles, 96, 2.0)
    x = (np.arange(96) - 48 + 0.5) * 2.0
    r = np.hypot(x[:, None] - 10.0, x[None, :])
    assert abs(np.median(recon[r < 40])) < 30.0
    assert abs(np.median(recon[r > 60]) + 1000.0) < 30.0


def test_photon_noise_grows_as_the_dose_falls():
    hu = _water_cylinder()
    clean = simulate_hu_slice(hu, 2.0, ANGLES, None, None, np.random.default_rng(0))
    spread = {}
    for photons in (1e3, 1e5):
        noisy = simulate_hu_slice(hu, 2.0, ANGLES, None, photons, np.random.default_rng(0))
        spread[photons] = float(np.std(noisy - clean))
    # Poisson: the log-signal's sd scales as 1 / sqrt(photons), so 100x the dose is about 10x quieter.
    assert 6.0 < spread[1e3] / spread[1e5] < 14.0
    with pytest.raises(ValueError, match="photon count"):
        simulate_hu_slice(hu, 2.0, ANGLES, None, 0, np.random.default_rng(0))
