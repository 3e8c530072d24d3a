"""mil: gated attention pooling (weights, the weighted mean), shapes, serialization and export parity."""

from __future__ import annotations

import keras
import numpy as np

from medflow.models.mil import GatedAttentionPooling
from medflow.models.registry import build_model
from medflow.models.runtimes import export_formats, load_keras, parity


def test_attention_is_a_distribution_and_pools_by_it():
    h = np.random.default_rng(0).normal(size=(2, 3, 4, 2, 5)).astype(np.float32)
    pool = GatedAttentionPooling(6)
    bag = np.asarray(pool(h))
    weights = GatedAttentionPooling(6, return_attention=True)
    weights.build(h.shape)
    weights.set_weights(pool.get_weights())
    a = np.asarray(weights(h))
    assert bag.shape == (2, 5) and a.shape == (2, 3, 4, 2)
    np.testing.assert_allclose(a.reshape(2, -1).sum(axis=1), 1.0, rtol=1e-5)
    expected = (h.reshape(2, -1, 5) * a.reshape(2, -1, 1)).sum(axis=1)
    np.testing.assert_allclose(bag, expected, rtol=1e-4, atol=1e-6)
    # one instance made to score far higher takes (almost) all the weight
    v, u, w = pool.get_weights()
    spike = np.zeros_like(h)
    spike[0, 1, 2, 1] = 1.0
    pool2 = GatedAttentionPooling(1)
    pool2.build(h.shape)
    pool2.set_weights([np.full((5, 1), 5.0, np.float32), np.full((5, 1), 5.0, np.float32),
                       np.full((1, 1), 20.0, np.float32)])
    np.testing.assert_allclose(np.asarray(pool2(spike))[0], spike[0, 1, 2, 1], atol=1e-3)


def test_mil_round_trip_and_parity(tmp_path):
    model = build_model("mil", (16, 16, 16, 1), 3, {"filters": 4, "attention_units": 8})
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 16, 1)).astype(np.float32)
    assert model.predict_on_batch(x).shape == (2, 3)
    assert model.get_layer("instances").output.shape[1:4] == (4, 4, 4)  # instances at stride 4
    export_formats(model, tmp_path)
    np.testing.assert_allclose(load_keras(tmp_path / "model.keras").predict_on_batch(x), model.predict_on_batch(x),
                               atol=1e-6)
    assert max(parity(tmp_path, x)["max_abs_diff"].values()) < 1e-4
    assert isinstance(model.get_layer("attention"), keras.layers.Layer)
