"""The normative baseline on toy heads with a planted bright or dark blob."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

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



def _structured_head(rng, kind: int, shape=(28, 32, 28)):
    """A head with inner structure (two bright and two dark regions off centre), moved by a random rotation of up
    to 10 degrees and a shift of up to 2 voxels, like the sample subjects; kind 1/2 adds a bright/dark blob."""
    from scipy.spatial.transform import Rotation

    idx = np.indices(shape).astype(float)
    c = (np.array(shape) - 1) / 2
    r = lambda centre, radii: np.sqrt(sum(((idx[i] - centre[i]) / radii[i]) ** 2 for i in range(3)))  # noqa: E731
    vol = (r(c, [11, 13, 11]) < 1) * 1.0
    for offset, radii, value in [([4, -3, 2], [3, 5, 3], 0.8), ([-5, 4, -2], [3, 3, 4], -0.7),
                                 ([3, 6, -4], [2, 2, 3], -0.7), ([-4, -5, 3], [3, 2, 2], 0.8)]:
        vol += (r(c + offset, radii) < 1) * value
    if kind:
        vol += (r(c + rng.uniform(-5, 5, 3), [2.5, 2.5, 2.5]) < 1) * (0.5 if kind == 1 else -0.5)
    rot = Rotation.from_euler("xyz", rng.uniform(-10, 10, 3), degrees=True).as_matrix()
    vol = ndimage.affine_transform(ndimage.gaussian_filter(vol, 0.7), rot, c - rot @ c + rng.uniform(-2, 2, 3), order=1)
    return vol + rng.normal(0, 0.05, shape)


def test_registration_finds_blobs_that_head_motion_hides():
    """Unregistered, the blob is lost among structures that move from head to head (0.25 here); registered onto
    a normal head, it stands out (0.92)."""
    rng = np.random.default_rng(3)
    kinds = [0, 1, 2] * 12
    vols = [_structured_head(rng, k) for k in kinds]
    settings = dict(sigma_vox=1.0, k=10, highpass_vox=4.0, workers=2)
    registered = fit_normative(vols[:24], kinds[:24], 3, normal=0, spacing=(3.0, 3.0, 3.0), **settings)
    plain = fit_normative(vols[:24], kinds[:24], 3, normal=0, **settings)
    truth = np.array(kinds[24:])
    acc_registered = np.mean(np.argmax(registered.predict(vols[24:], workers=2), axis=1) == truth)
    acc_plain = np.mean(np.argmax(plain.predict(vols[24:]), axis=1) == truth)
    assert acc_registered >= 0.8 and acc_registered > acc_plain + 0.3, (acc_registered, acc_plain)
    assert registered.template is not None and plain.template is None
