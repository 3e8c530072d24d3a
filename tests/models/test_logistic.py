"""The shared logistic regression and the refit of a network's softmax layer."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medflow.models.logistic import balanced_weights, fit_softmax, refit_softmax_layer, softmax


def _toy(n_features=3, n_classes=3):
    inputs = keras.Input((n_features,))
    hidden = keras.layers.Dense(n_features, name="features", kernel_initializer="identity",
                                bias_initializer="zeros")(inputs)
    out = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(hidden)
    return keras.Model(inputs, out)


def test_refit_puts_the_regression_into_the_layer_with_standardization_folded():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    # Features of very different scales: the class is in the tiny second one (its sign) and the first.
    x = np.stack([rng.normal(0, 1, 60) + 3.0 * (y > 0), 0.01 * np.where(y == 1, 1, -1) + rng.normal(0, 1e-3, 60),
                  rng.normal(100, 5, 60)], axis=1).astype(np.float32)
    model = _toy()
    before = np.argmax(model(x), axis=1)
    info = refit_softmax_layer(model, "probabilities", x, y, 3, l2=1e-3)
    after = np.asarray(model(x))
    assert info["cases"] == 60 and info["accuracy_after"] == 1.0
    assert np.mean(np.argmax(after, axis=1) == y) == 1.0 and np.mean(before == y) < 0.9
    # The layer computes exactly the regression on standardized features.
    centre, scale = x.mean(0), x.std(0)
    z = np.hstack([(x - centre) / scale, np.ones((60, 1))])
    w = fit_softmax(z, y, 3, 1e-3, balanced_weights(y, 3))
    np.testing.assert_allclose(after, softmax(z @ w), atol=1e-4)


def test_refit_checks_the_layer_shape_and_weights_classes_alike():
    model = _toy()
    with pytest.raises(ValueError, match="maps 3 features to 3 classes"):
        refit_softmax_layer(model, "probabilities", np.zeros((4, 2)), np.array([0, 1, 2, 0]), 3)
    w = balanced_weights(np.array([0, 0, 0, 1]), 3)
    assert np.isclose(w[:3].sum(), w[3:].sum())  # class 2 absent: the two present classes weigh the same


def test_a_constant_feature_gets_no_weight():
    y = np.array([0, 1] * 10)
    x = np.stack([y + 0.1 * np.arange(20) % 3, np.full(20, 7.0), np.zeros(20)], axis=1).astype(np.float32)
    model = _toy(n_classes=2)
    refit_softmax_layer(model, "probabilities", x, y, 2)
    kernel, _ = model.get_layer("probabilities").get_weights()
    assert np.allclose(kernel[1:], 0.0)
