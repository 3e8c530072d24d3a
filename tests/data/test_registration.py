"""Affine registration: a head moved by a known affine is put back where it was."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from medflow.data.registration import align_all, centred_grid, register_affine, warp_affine

SPACING = (3.0, 3.0, 2.5)


def _head(shape=(40, 44, 44), seed=0):
    """A smooth ellipsoidal 'head' with an off-centre bright and dark structure (so rotations are visible)."""
    idx = np.indices(shape).astype(np.float32)
    c = (np.array(shape) - 1) / 2
    r = lambda centre, radii: np.sqrt(sum(((idx[i] - centre[i]) / radii[i]) ** 2 for i in range(3)))  # noqa: E731
    vol = (r(c, [15, 17, 16]) < 1) * 1.0 + (r(c + [5, -4, 3], [4, 6, 3]) < 1) * 0.8
    vol -= (r(c + [-6, 5, -2], [3, 3, 5]) < 1) * 0.6
    vol = ndimage.gaussian_filter(vol, 1.0)
    return (vol + np.random.default_rng(seed).normal(0, 0.02, shape)).astype(np.float32)


def _moved(vol, deg, scale, shift_mm):
    """``vol`` under a known affine about its centre (the world origin of ``centred_grid``, in mm)."""
    m = np.eye(4)  # output world -> input world
    m[:3, :3] = Rotation.from_euler("xyz", deg, degrees=True).as_matrix() * scale
    m[:3, 3] = shift_mm
    return warp_affine(vol, vol.shape, m, SPACING)


def test_a_known_affine_is_undone():
    static = _head()
    moving = _moved(static, (6, -4, 8), 1.06, (4.0, -3.0, 2.0))
    brain = static > 0.5
    before = np.abs(moving - static)[brain].mean()
    back = warp_affine(moving, static.shape, register_affine(moving, static, SPACING), SPACING)
    after = np.abs(back - static)[brain].mean()
    assert after < 0.25 * before, (before, after)
    assert np.corrcoef(back[brain], static[brain])[0, 1] > 0.97


def test_registration_is_deterministic_and_leaves_the_global_generator_alone():
    static, moving = _head(), _moved(_head(seed=1), (3, 0, -5), 0.97, (2.0, 0.0, -2.0))
    np.random.seed(123)
    first = register_affine(moving, static, SPACING, seed=4)
    after_first = np.random.random()
    np.random.seed(123)
    second = register_affine(moving, static, SPACING, seed=4)
    assert np.array_equal(first, second)
    assert np.random.random() == after_first  # the caller's random stream is untouched


def test_align_all_matches_one_by_one_on_workers():
    static = _head()
    volumes = [_moved(_head(seed=i), (2 * i, -i, i), 1.0 + 0.02 * i, (i, 0.0, -i)) for i in range(3)]
    serial = align_all(volumes, static, SPACING, workers=1)
    parallel = align_all(volumes, static, SPACING, workers=2)
    assert all(a.shape == static.shape and a.dtype == np.float32 for a in serial)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_warp_identity_centres_and_background():
    vol = _head()
    np.testing.assert_allclose(warp_affine(vol, vol.shape, np.eye(4), SPACING), vol, atol=1e-6)
    # the identity maps centre to centre: a larger output grid holds the volume in its middle
    padded = warp_affine(vol, np.array(vol.shape) + 4, np.eye(4), SPACING)
    np.testing.assert_allclose(padded[2:-2, 2:-2, 2:-2], vol, atol=1e-6)
    assert np.allclose(centred_grid((3, 5, 7), (2.0, 1.0, 3.0)) @ [1, 2, 3, 1], [0, 0, 0, 1])
    shifted = np.eye(4)
    shifted[0, 3] = 1000.0  # entirely outside: the moving volume's minimum everywhere
    assert np.all(warp_affine(vol, (5, 5, 5), shifted, SPACING) == vol.min())


def test_volumes_of_other_shapes_register():
    """Crops of different sizes (a moving volume larger than the static one): the grids are centred on each."""
    static = _head()
    moving = np.pad(_moved(_head(seed=2), (-5, 4, 3), 1.03, (3.0, 2.0, -2.0)), ((3, 5), (0, 4), (2, 2)),
                    constant_values=float(static.min()))
    brain = static > 0.5
    back = warp_affine(moving, static.shape, register_affine(moving, static, SPACING), SPACING)
    assert back.shape == static.shape
    assert np.corrcoef(back[brain], static[brain])[0, 1] > 0.97
