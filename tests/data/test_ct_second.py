"""The second measurement model (data/ct/second.py): the same object, another simulator."""

from __future__ import annotations

import numpy as np

from medflow.data.ct.ellipses import EllipsesSpec, make_sample
from medflow.data.ct.physics import fbp, midpoint_angles
from medflow.data.ct.second import second_detectors, second_sinogram, second_split
from medflow.models.metrics import image_quality

SPEC = EllipsesSpec(size=64, angles=20, counts={"train": 0, "validation": 0, "test": 4})


def test_it_measures_the_same_object_differently():
    angles = midpoint_angles(20)
    sino, _, truth = make_sample(SPEC, "test", 0)
    second = second_sinogram(truth, angles, np.random.default_rng(0), noise=0.0)
    main_clean = make_sample(EllipsesSpec(size=64, angles=20, noise=0.0), "test", 0)[0]
    assert second.shape == sino.shape == (91, 20) and second_detectors(64) == 83
    # The same line integrals to a few per cent of their range, but not the same numbers.
    diff = np.abs(second - main_clean)
    assert diff.max() < 0.1 * np.abs(main_clean).max() and diff.mean() > 1e-3 * np.abs(main_clean).mean()
    # FBP of either measurement is about as good: the second model is a fair scanner, not a broken one.
    q_main = image_quality(truth, fbp(main_clean, angles, 64, "hann"))["psnr"]
    q_second = image_quality(truth, fbp(second, angles, 64, "hann"))["psnr"]
    assert abs(q_main - q_second) < 1.5


def test_noise_is_seeded_per_image_and_scaled_like_the_main_simulator():
    angles = midpoint_angles(20)
    truths = np.stack([make_sample(SPEC, "test", i)[2] for i in range(2)])
    a = second_split(truths, np.array([5, 6]), angles, seed=0)
    b = second_split(truths, np.array([5, 6]), angles, seed=0)
    c = second_split(truths, np.array([5, 6]), angles, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    clean = second_sinogram(truths[0], angles, np.random.default_rng(0), noise=0.0)
    residual = (a[0] - clean)
    # 2.5 % of the mean |sinogram| per detector, then averaged over about 1.1 bins by the rebinning.
    assert 0.01 * np.mean(np.abs(clean)) < residual.std() < 0.03 * np.mean(np.abs(clean))
