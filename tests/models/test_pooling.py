"""Top-k and LogSumExp global pooling: values against NumPy, limits, serialization."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medflow.models.pooling import GlobalLogSumExpPooling, GlobalTopKPooling
from medflow.models.registry import build_model
from medflow.models.runtimes import load_keras

X = np.random.default_rng(0).normal(size=(2, 4, 5, 3, 6)).astype(np.float32)  # (N, D, H, W, C)


def test_topk_is_the_mean_of_the_largest_values_per_channel():
    out = np.asarray(GlobalTopKPooling(0.1)(X))  # 10 % of 60 positions: 6
    flat = X.reshape(2, -1, 6)
    expected = np.sort(flat, axis=1)[:, -6:, :].mean(axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(GlobalTopKPooling(1e-6)(X)), flat.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(GlobalTopKPooling(1.0)(X)), flat.mean(axis=1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="fraction must be in"):
        GlobalTopKPooling(0)


def test_lse_lies_between_mean_and_max():
    flat = X.reshape(2, -1, 6)
    out = np.asarray(GlobalLogSumExpPooling(5.0)(X))
    expected = (np.log(np.exp(5.0 * flat.astype(np.float64)).mean(axis=1))) / 5.0
    np.testing.assert_allclose(out, expected, rtol=1e-4)
    assert np.all(out >= flat.mean(axis=1) - 1e-5) and np.all(out <= flat.max(axis=1) + 1e-5)
    np.testing.assert_allclose(np.asarray(GlobalLogSumExpPooling(1e3)(X)), flat.max(axis=1), atol=0.01)


def test_a_small_bright_spot_survives_topk_but_not_the_average():
    x = np.zeros((1, 16, 16, 16, 1), np.float32)
    x[0, 5:7, 5:7, 5:7] = 1.0  # 8 of 4096 voxels
    assert float(np.asarray(GlobalTopKPooling(0.002)(x))[0, 0]) == pytest.approx(1.0)
    assert float(np.asarray(keras.layers.GlobalAveragePooling3D()(x))[0, 0]) < 0.002


@pytest.mark.parametrize("pooling", ["topk", "lse"])
def test_classifiers_with_the_pooling_round_trip(tmp_path, pooling):
    model = build_model("cnn", (16, 16, 16, 1), 3, {"filters": 4, "blocks": 2, "pooling": pooling})
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 16, 1)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    again = load_keras(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
