"""The normative baseline on toy heads with a planted bright or dark blob."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.models.normative import fit_normative


def _head(rng, kind: int, shape=(20, 20, 16)):
    """A noisy ellipsoidal 'head'; kind 1 adds a bright blob, kind 2 a dark one, at a random place."""
    idx = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    head = (((idx - centre[:, None, None, None]) / (np.array(shape)[:, None, None, None] * 0.4)) ** 2).sum(0) < 1
    vol = np.where(head, 1.0, 0.0) + rng.normal(0, 0.15, shape)
    if kind:
        c = rng.integers(7, 13, 3)
        blob = ((idx - c[:, None, None, None]) ** 2).sum(0) < 2.5**2
        vol[blob] += 0.8 if kind == 1 else -0.8
    return vol


def test_planted_blobs_are_told_apart(tmp_path):
    rng = np.random.default_rng(0)
    kinds = [0, 1, 2] * 14
    vols = np.stack([_head(rng, k) for k in kinds])
    model = fit_normative(vols[:30], kinds[:30], 3, normal=0, sigma_vox=1.0, k=20)
    probs = model.predict(vols[30:])
    assert np.mean(np.argmax(probs, axis=1) == np.array(kinds[30:])) >= 0.9
    f_bright, f_dark, f_normal = (model.features(_head(rng, k)) for k in (1, 2, 0))
    assert f_bright[0] > f_normal[0] + 1 and f_dark[1] > f_normal[1] + 1  # the tails carry the lesion
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_it_needs_normals_and_tolerates_a_missing_class():
    rng = np.random.default_rng(1)
    vols = np.stack([_head(rng, k) for k in (1, 2, 1, 2)])
    with pytest.raises(ValueError, match="at least 2 normal training subjects"):
        fit_normative(vols, [1, 2, 1, 2], 3, normal=0, sigma_vox=1.0, k=5)
    few = fit_normative(np.stack([_head(rng, k) for k in (0, 0, 0, 1, 1)]), [0, 0, 0, 1, 1], 3, normal=0,
                        sigma_vox=1.0, k=5)
    assert few.predict([_head(rng, 1)])[0, 2] < 0.34  # a class never seen in training is never favoured
