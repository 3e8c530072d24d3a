"""Sliding-window inference: coverage, blending and mirroring on a model we can compute by hand."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.models.inference import gaussian_importance, sliding_window, window_starts


def _threshold_model(x):
    """A 'network' with a known answer: class 1 where channel 0 > 0.5 (exact, window-independent)."""
    p1 = (x[..., 0] > 0.5).astype(np.float32)
    return np.stack([1 - p1, p1], axis=-1)


def test_window_starts_cover_with_overlap():
    assert window_starts(10, 16, 0.5) == [0]
    starts = window_starts(100, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 68
    assert all(b - a <= 16 for a, b in zip(starts, starts[1:]))
    w = gaussian_importance((9, 9))
    assert w.max() == 1.0 and w.min() > 0 and w[4, 4] == 1.0 and w[0, 0] < w[2, 2]


@pytest.mark.parametrize("mode,patch,axis", [("3d", (8, 8, 8), 2), ("2d", (8, 8), 2), ("2d", (8, 8), 0)])
def test_sliding_window_reproduces_a_pointwise_model(mode, patch, axis):
    rng = np.random.default_rng(0)
    image = rng.random((1, 13, 19, 6)).astype(np.float32)  # smaller than the patch along one axis
    calls = []

    def predict(x):
        calls.append(x.shape)
        return _threshold_model(x)

    probs = sliding_window(predict, image, patch, 2, mode=mode, slice_axis=axis, overlap=0.5, batch_size=3)
    assert probs.shape == (13, 19, 6, 2) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.argmax(probs, -1), image[0] > 0.5)
    assert all(c[0] <= 3 and c[1:-1] == tuple(patch) for c in calls)


def test_mirroring_averages_flipped_predictions():
    image = np.linspace(0, 1, 8 * 8 * 8, dtype=np.float32).reshape(1, 8, 8, 8)

    def left_biased(x):  # not flip-equivariant: its answer depends on the position along axis 0
        ramp = np.linspace(0, 1, x.shape[1], dtype=np.float32)[None, :, None, None]
        p1 = np.broadcast_to(ramp, x.shape[:-1])
        return np.stack([1 - p1, p1], -1)

    plain = sliding_window(left_biased, image, (8, 8, 8), 2)
    mirrored = sliding_window(left_biased, image, (8, 8, 8), 2, mirror_axes=[0])
    assert plain[0, 0, 0, 1] == pytest.approx(0.0) and plain[-1, 0, 0, 1] == pytest.approx(1.0)
    np.testing.assert_allclose(mirrored[..., 1], 0.5, atol=1e-6)
