"""PreciseBN: the moving statistics become the population figures of the given batches, nothing else changes."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medflow.models.layers import FusedBatchNormalization
from medflow.training.precise_bn import batchnorm_layers, recalibrate, recalibration_change


def _model():
    inputs = keras.Input((6,))
    x = keras.layers.BatchNormalization(name="bn_a")(inputs)
    x = keras.layers.Dense(4, name="dense")(x)
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, FusedBatchNormalization(name="bn_fused")(inner_in), name="inner")
    x = inner(x)
    frozen = keras.layers.BatchNormalization(name="bn_frozen")
    frozen.trainable = False
    return keras.Model(inputs, frozen(x))


def test_statistics_are_those_of_all_batches_and_weights_stay(tmp_path):
    keras.utils.set_random_seed(0)
    model = _model()
    rng = np.random.default_rng(0)
    batches = [(rng.normal(3.0 + i, 2.0, (8, 6)).astype("float32"), np.zeros(8)) for i in range(5)]
    kernel = model.get_layer("dense").get_weights()[0].copy()
    frozen_before = [w.copy() for w in model.get_layer("bn_frozen").get_weights()]
    found = batchnorm_layers(model)
    assert sorted(bn.name for bn in found) == ["bn_a", "bn_fused"]  # nested found, frozen left out

    used = recalibrate(model, iter(batches), max_batches=4)

    assert used == 4
    x = np.concatenate([b[0] for b in batches[:4]]).astype(np.float64)  # equal batches: pooled statistics
    bn = model.get_layer("bn_a")
    np.testing.assert_allclose(bn.moving_mean.numpy(), x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), x.var(0), rtol=1e-4)
    assert bn.momentum == 0.99  # restored
    # The second layer saw the first one in training mode: its inputs, batch by batch, pooled the same way.
    dense = model.get_layer("dense")
    h = []
    for xb, _ in batches[:4]:
        z = (xb - xb.mean(0)) / np.sqrt(xb.var(0) + bn.epsilon) * bn.gamma.numpy() + bn.beta.numpy()
        h.append(z @ dense.kernel.numpy() + dense.bias.numpy())
    h = np.concatenate(h)
    fused = model.get_layer("inner").get_layer("bn_fused")
    np.testing.assert_allclose(fused.moving_mean.numpy(), h.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), h.var(0), rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(dense.get_weights()[0], kernel)
    for a, b in zip(model.get_layer("bn_frozen").get_weights(), frozen_before):
        np.testing.assert_array_equal(a, b)
    # The statistics survive a .keras round trip.
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(again.get_layer("bn_a").moving_variance.numpy(), x.var(0), rtol=1e-4)


def test_a_failing_pass_leaves_the_model_as_it_came():
    model = _model()
    bn = model.get_layer("bn_a")
    mean, var = bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()

    def batches():
        yield np.ones((4, 6), "float32") * 5
        raise RuntimeError("the loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        recalibrate(model, batches(), max_batches=10)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)
    np.testing.assert_array_equal(bn.moving_variance.numpy(), var)
    assert bn.momentum == 0.99
    assert recalibrate(model, iter([]), max_batches=10) == 0
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)


def test_change_reports_for_the_trainer_and_none_without_batchnorm():
    from types import SimpleNamespace

    model = _model()
    asked = []

    def batches(epochs, n):
        asked.append((epochs, n))
        return iter([np.ones((4, 6), "float32")] * 3)

    report = recalibration_change(SimpleNamespace(precise_bn_batches=2), 7, batches)(model)
    assert asked == [(range(7, 8), 2)]  # the epoch after the last trained (epochs 0-6)
    assert report["metrics"] == {"precise_bn_batches": 2}
    assert report["record"]["precise_bn"]["batches"] == 2 and report["record"]["precise_bn"]["layers"] == 2
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert recalibration_change(SimpleNamespace(precise_bn_batches=5), 1,
                                lambda e, n: iter([np.ones((2, 3), "float32")]))(plain) is None
    assert recalibration_change(SimpleNamespace(precise_bn_batches=0), 1, batches) is None
