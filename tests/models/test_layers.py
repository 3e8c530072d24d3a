"""FusedBatchNormalization computes what keras.layers.BatchNormalization computes, through the fused kernel."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from medflow.models.layers import FusedBatchNormalization


def _pair(shape, **kwargs):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3 + 1.5).astype(np.float32)
    ref, fused = keras.layers.BatchNormalization(**kwargs), FusedBatchNormalization(**kwargs)
    ref.build(shape)
    fused.build(shape)
    weights = [rng.standard_normal(shape[-1]).astype(np.float32) * 0.5 + 1 for _ in ref.weights]
    weights[-1] = np.abs(weights[-1])  # moving variance
    for layer in (ref, fused):  # the same non-trivial weights in both
        layer.set_weights(weights)
    return x, ref, fused, weights


def _train_pass(layer, x):
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=True)
        loss = tf.reduce_sum(y * tf.sin(y))  # a non-linear loss, so the gradient depends on y
    grads = tape.gradient(loss, [xt, *layer.trainable_weights])
    return y.numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("shape", [(4, 6, 5, 3), (2, 4, 6, 5, 3)])
def test_training_pass_matches_keras(shape):
    x, ref, fused, start = _pair(shape, momentum=0.9)
    traced = tf.function(lambda t: fused(t, training=True)).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    kernels = {op.type for op in traced.graph.get_operations()}
    assert "FusedBatchNormV3" in kernels and "Mean" not in kernels  # the fused kernel, not Keras's moments
    y_ref, g_ref = _train_pass(ref, x)
    y_fused, g_fused = _train_pass(fused, x)
    np.testing.assert_allclose(y_fused, y_ref, atol=1e-5)
    for a, b in zip(g_fused, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, np.abs(b).max()))
    for a, b in zip(fused.non_trainable_weights, ref.non_trainable_weights):  # moving mean and biased variance
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(fused.non_trainable_weights[0].numpy(), start[-2])  # the statistics did move


def test_inference_and_unscaled_variants_match_keras():
    x, ref, fused, start = _pair((3, 4, 4, 2))
    np.testing.assert_allclose(fused(x, training=False), ref(x, training=False), atol=1e-6)
    x, ref, fused, start = _pair((3, 4, 4, 2), center=False, scale=False)
    np.testing.assert_allclose(_train_pass(fused, x)[0], _train_pass(ref, x)[0], atol=1e-5)


def test_keras_round_trip(tmp_path):
    inputs = keras.Input((8, 8, 2))
    model = keras.Model(inputs, FusedBatchNormalization(name="bn")(keras.layers.Conv2D(4, 3)(inputs)))
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 2)).astype(np.float32)
    model(x, training=True)  # moves the moving statistics
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert type(loaded.get_layer("bn")) is FusedBatchNormalization
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), atol=1e-6)


@pytest.mark.parametrize("name,shape,params", [
    ("unet2d", (16, 16, 1), {"depth": 2, "filters": 4}),
    ("unet3d", (8, 8, 8, 1), {"depth": 1, "filters": 4}),
    ("cnn", (8, 12, 8, 1), {"filters": 4, "blocks": 2, "dropout": 0.0}),  # dropout draws would differ
    ("resnet", (16, 16, 1), {"filters": 4, "stages": [1, 1], "dropout": 0.0}),
])
def test_models_train_alike_with_fused_and_keras_batch_norm(name, shape, params):
    from medflow.models.registry import build_model

    fused = build_model(name, shape, 3, params)
    plain = build_model(name, shape, 3, {**params, "norm": "keras_batch"})
    kinds = {type(layer) for layer in fused.layers}, {type(layer) for layer in plain.layers}
    assert FusedBatchNormalization in kinds[0] and keras.layers.BatchNormalization not in kinds[0]
    assert keras.layers.BatchNormalization in kinds[1] and FusedBatchNormalization not in kinds[1]
    plain.set_weights(fused.get_weights())
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, *shape)).astype(np.float32)
    y = rng.integers(0, 3, (4, *shape[:-1]) if name.startswith("unet") else (4,))
    for model in (fused, plain):  # two SGD steps: gradients and moving statistics must agree
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="must be one of"):
        build_model(name, shape, 3, {**params, "norm": "batchy"})
