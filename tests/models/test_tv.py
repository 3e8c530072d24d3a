"""TV-PDHG (models/tv.py): exact adjoints, convergence on piecewise-constant phantoms, tuning on validation."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medflow.data.ct.ellipses import EllipsesSpec, make_sample
from medflow.models.metrics import image_quality
from medflow.models.tv import TVSolver, _grad, _grad_adjoint, checkpoints_up_to, tune

SPEC = EllipsesSpec(size=32, angles=10, counts={"train": 0, "validation": 6, "test": 0})


def test_gradient_adjoint_is_exact():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((2, 9, 7, 1)))
    q = tf.constant(rng.standard_normal((2, 9, 7, 2)))
    q = tf.concat([tf.concat([q[:, :-1, :, :1], tf.zeros_like(q[:, :1, :, :1])], 1), q[..., 1:]], -1)
    assert float(tf.reduce_sum(_grad(x) * q)) == pytest.approx(float(tf.reduce_sum(x * _grad_adjoint(q))), rel=1e-10)


@pytest.fixture(scope="module")
def samples():
    return [make_sample(SPEC, "validation", i) for i in range(6)]


def test_tv_beats_fbp_on_sparse_noisy_views(samples):
    sino = np.stack([s[0] for s in samples])
    fbp = np.stack([s[1] for s in samples])
    truth = np.stack([s[2] for s in samples])
    images = TVSolver(SPEC.geometry()).reconstruct(sino, 1e-3, 300, init=fbp, batch=4)
    assert images.shape == truth.shape and images.min() >= 0.0
    tv = np.mean([image_quality(t, x)["psnr"] for t, x in zip(truth, images)])
    base = np.mean([image_quality(t, x)["psnr"] for t, x in zip(truth, fbp)])
    assert tv > base + 1.0


def test_more_iterations_lower_the_objective(samples):
    solver = TVSolver(SPEC.geometry())
    sino = np.stack([s[0] for s in samples[:2]])

    def objective(state):
        x = state["x"]
        data = 0.5 * float(tf.reduce_sum((solver.forward(x) - state["b"]) ** 2))
        return data + 1e-3 * float(tf.reduce_sum(tf.norm(_grad(x), axis=-1)))

    state = solver.iterate(solver.start(sino, 1e-3), 20)
    early = objective(state)
    state = solver.iterate(state, 200)
    assert state["done"] == 220 and objective(state) < early


def test_tune_scans_a_grid_and_returns_its_best(samples):
    sino = np.stack([s[0] for s in samples[:3]])
    truth = np.stack([s[2] for s in samples[:3]])
    solver = TVSolver(SPEC.geometry())
    result = tune(solver, sino, truth, lambda t, x: image_quality(t, x)["psnr"], weights=(1e-3, 1e-1),
                  checkpoints=(20, 60))
    assert len(result["grid"]) == 4 * 2  # two weights, then the best one's half and double
    assert result["score"] == max(row[2] for row in result["grid"])
    assert (result["weight"], result["iterations"], result["score"]) in {tuple(r) for r in result["grid"]}


def test_checkpoints_stop_at_the_iteration_cap():
    assert checkpoints_up_to(1000) == (100, 250, 500, 1000)
    assert checkpoints_up_to(300) == (100, 250, 300) and checkpoints_up_to(50) == (50,)


def test_one_batch_of_several_weights_equals_one_run_per_weight(samples):
    """tune scans all its weights in one batch (per-image weights): each image must iterate as if alone."""
    sino = np.stack([s[0] for s in samples[:2]])
    solver = TVSolver(SPEC.geometry())
    batched = solver.iterate(solver.start(np.tile(sino, (2, 1, 1)), np.repeat([1e-3, 1e-1], 2)), 30)["x"].numpy()
    for j, weight in enumerate((1e-3, 1e-1)):
        alone = solver.iterate(solver.start(sino, weight), 30)["x"].numpy()
        np.testing.assert_allclose(batched[2 * j:2 * j + 2], alone, atol=1e-5)
    assert np.abs(batched[:2] - batched[2:]).max() > 1e-3  # the two weights do differ


@pytest.mark.parametrize("detectors", [None, 31])  # scikit-image's grid, and a rebinned detector count
def test_dense_operator_equals_the_projector_layer_and_gives_the_same_tv(samples, monkeypatch, detectors):
    import medflow.models.tv as tv
    from medflow.data.ct.projector import n_detectors, ray_transform
    from medflow.models.projector import ParallelBeamProjector

    geometry = SPEC.geometry()
    angles = [float(a) for a in geometry["angles_deg"]]
    count = detectors or n_detectors(SPEC.size)
    matrix = ray_transform(SPEC.size, tuple(angles), count)
    forward, adjoint = tv.dense_pair(matrix, 0.5, len(angles))
    rng = np.random.default_rng(1)
    x = tf.constant(rng.random((3, SPEC.size, SPEC.size, 1)), tf.float32)
    y = tf.constant(rng.random((3, count, len(angles), 1)), tf.float32)
    layer_x = ParallelBeamProjector(SPEC.size, angles, count, scale=0.5)(x)
    layer_y = ParallelBeamProjector(SPEC.size, angles, count, adjoint=True, scale=0.5)(y)
    np.testing.assert_allclose(forward(x).numpy(), layer_x.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adjoint(y).numpy(), layer_y.numpy(), rtol=1e-5, atol=1e-5)

    sino, fbp = np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples])
    if detectors is None:  # the solver picks dense for this small geometry, the layers when dense is too big
        solver = TVSolver(geometry)
        assert not isinstance(solver.forward, ParallelBeamProjector)
        dense = solver.reconstruct(sino, 1e-3, 200, init=fbp)
        monkeypatch.setattr(tv, "DENSE_MAX_ENTRIES", 0)
        gathered = TVSolver(geometry)
        assert isinstance(gathered.forward, ParallelBeamProjector)
        np.testing.assert_allclose(dense, gathered.reconstruct(sino, 1e-3, 200, init=fbp), atol=1e-4)
