"""ParallelBeamProjector: A and A^T as a Keras layer, exact to the matrix, adjoint, differentiable, exportable."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from medflow.data.ct.physics import midpoint_angles
from medflow.data.ct.projector import operator_norm, ray_transform
from medflow.models.projector import ParallelBeamProjector

SIZE, ANGLES = 24, midpoint_angles(8)


def test_forward_matches_the_matrix_per_channel():
    x = np.random.default_rng(0).random((3, SIZE, SIZE, 2)).astype(np.float32)
    y = ParallelBeamProjector(SIZE, ANGLES)(x).numpy()
    matrix = ray_transform(SIZE, tuple(ANGLES))
    assert y.shape == (3, 34, 8, 2)
    for b in range(3):
        for c in range(2):
            ref = (matrix @ x[b, ..., c].ravel().astype(np.float64)).reshape(34, 8)
            assert np.abs(y[b, ..., c] - ref).max() <= 1e-5 * np.abs(ref).max()


def test_adjoint_identity():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, SIZE, SIZE, 1)).astype(np.float32)
    y = rng.standard_normal((2, 34, 8, 1)).astype(np.float32)
    a, at = ParallelBeamProjector(SIZE, ANGLES), ParallelBeamProjector(SIZE, ANGLES, adjoint=True)
    lhs = float(np.sum(a(x).numpy().astype(np.float64) * y))
    rhs = float(np.sum(x.astype(np.float64) * at(y).numpy()))
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


def test_gradient_is_the_adjoint_and_matches_finite_differences():
    rng = np.random.default_rng(2)
    a = ParallelBeamProjector(SIZE, ANGLES, scale=0.5)
    x = tf.constant(rng.standard_normal((1, SIZE, SIZE, 1)), tf.float32)
    g = tf.constant(rng.standard_normal((1, 34, 8, 1)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = tf.reduce_sum(a(x) * g)
    grad = tape.gradient(value, x).numpy()
    expected = ParallelBeamProjector(SIZE, ANGLES, adjoint=True, scale=0.5)(g).numpy()
    assert np.abs(grad - expected).max() <= 1e-5 * np.abs(expected).max()
    # A finite difference along a random direction: the functional is linear, so it is exact up to rounding.
    d = rng.standard_normal(x.shape).astype(np.float32)
    eps = 1e-2
    fd = (float(tf.reduce_sum(a(x + eps * d) * g)) - float(tf.reduce_sum(a(x - eps * d) * g))) / (2 * eps)
    assert fd == pytest.approx(float(np.sum(grad * d)), rel=1e-3)


def test_operator_norm_through_the_layer():
    """||A|| from the layer pair by power iteration equals the matrix's (the tables are the matrix)."""
    a, at = ParallelBeamProjector(SIZE, ANGLES), ParallelBeamProjector(SIZE, ANGLES, adjoint=True)
    x = np.random.default_rng(3).standard_normal((1, SIZE, SIZE, 1)).astype(np.float32)
    for _ in range(60):
        x = at(a(x / np.linalg.norm(x))).numpy()
    assert np.sqrt(np.linalg.norm(x)) == pytest.approx(operator_norm(ray_transform(SIZE, tuple(ANGLES))), rel=1e-4)


def test_wrong_input_size_is_refused():
    with pytest.raises(ValueError, match=r"input \(20, 20\), the geometry needs \(24, 24\)"):
        ParallelBeamProjector(SIZE, ANGLES)(np.zeros((1, 20, 20, 1), np.float32))


def test_round_trip_and_onnx_parity(tmp_path):
    import onnxruntime as ort

    inputs = keras.Input((SIZE, SIZE, 1))
    model = keras.Model(inputs, ParallelBeamProjector(SIZE, ANGLES, detectors=30, name="forward")(inputs))
    model.save(tmp_path / "p.keras")
    loaded = keras.saving.load_model(tmp_path / "p.keras", safe_mode=True)
    assert loaded.get_layer("forward").get_config()["detectors"] == 30
    x = np.random.default_rng(4).random((2, SIZE, SIZE, 1)).astype(np.float32)
    assert np.array_equal(loaded(x).numpy(), model(x).numpy())
    model.export(str(tmp_path / "p.onnx"), format="onnx", verbose=False)
    session = ort.InferenceSession(str(tmp_path / "p.onnx"))
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.abs(out - model(x).numpy()).max() <= 1e-5 * np.abs(out).max()
