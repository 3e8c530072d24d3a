"""Orientation, resampling and cropping keep every voxel at its world position."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.data.geometry import (
    axcodes,
    canonical_spacing,
    crop,
    foreground_bbox,
    resample_to_spacing,
    to_canonical,
    voxel_spacing,
    voxel_to_world,
    world_to_voxel,
)
from tests.helpers import make_affine

AFFINES = {
    "flipped": make_affine((1.0, 1.0, 1.0), "LPS"),
    "anisotropic": make_affine((0.7, 1.3, 3.0), "RAS", origin=(-5.0, 4.0, 2.0)),
    # sign per voxel axis from the letters (-, +, -), world axis from perm: voxel axes point I, R, P
    "permuted_flipped": make_affine((2.0, 0.5, 1.5), "LAI", perm=(2, 0, 1)),
}


def _marker_volume(shape=(11, 9, 7), at=(3, 6, 2)):
    data = np.zeros(shape, np.float32)
    data[at] = 1.0
    return data, at


def test_voxel_world_roundtrip():
    aff = AFFINES["permuted_flipped"]
    ijk = np.array([[0, 0, 0], [3, 4, 5], [10.5, 2.25, 1]])
    np.testing.assert_allclose(world_to_voxel(aff, voxel_to_world(aff, ijk)), ijk, atol=1e-9)
    assert axcodes(aff) == "IRP"
    # by hand: voxel axis 0 steps -2 mm along z, axis 1 +0.5 mm along x, axis 2 -1.5 mm along y
    np.testing.assert_allclose(voxel_to_world(aff, [[1, 1, 1]])[0], [30.0 + 0.5, -12.0 - 1.5, 7.5 - 2.0])


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_to_canonical_keeps_world_position(name):
    aff = AFFINES[name]
    data, at = _marker_volume()
    world = voxel_to_world(aff, [at])[0]
    out, new_aff = to_canonical(data, aff)
    assert axcodes(new_aff) == "RAS"
    (new_at,) = np.argwhere(out == 1.0)
    np.testing.assert_allclose(voxel_to_world(new_aff, [new_at])[0], world, atol=1e-9)
    np.testing.assert_allclose(sorted(voxel_spacing(new_aff)), sorted(voxel_spacing(aff)))
    np.testing.assert_allclose(voxel_spacing(new_aff), canonical_spacing(aff))


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_resample_keeps_world_position(name):
    aff = AFFINES[name]
    shape = (24, 20, 18)
    # A smooth linear ramp in world x: linear resampling reproduces it exactly inside the grid.
    idx = np.indices(shape).reshape(3, -1).T
    world = voxel_to_world(aff, idx)
    data = (world[:, 0] * 2.0 + world[:, 1] - 0.5 * world[:, 2]).reshape(shape).astype(np.float32)
    out, new_aff = resample_to_spacing(data, aff, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(voxel_spacing(new_aff), [1.0, 1.0, 1.0])
    # Every output voxel whose centre lies inside the input grid holds the ramp value at its own world point.
    out_idx = np.indices(out.shape).reshape(3, -1).T
    out_world = voxel_to_world(new_aff, out_idx)
    src = world_to_voxel(aff, out_world)
    inside = np.all((src >= 0) & (src <= np.array(shape) - 1), axis=1)
    expect = out_world[:, 0] * 2.0 + out_world[:, 1] - 0.5 * out_world[:, 2]
    np.testing.assert_allclose(out.reshape(-1)[inside], expect[inside], atol=1e-3)
    # The field of view is kept: outer voxel edges coincide.
    old_extent = np.array(shape) * voxel_spacing(aff)
    new_extent = np.array(out.shape) * voxel_spacing(new_aff)
    np.testing.assert_allclose(new_extent, old_extent, atol=1.0)


def test_resample_label_nearest_keeps_classes():
    aff = make_affine((0.6, 0.6, 2.7), "RAS")
    lab = np.zeros((30, 30, 8), np.uint8)
    lab[5:20, 5:20, 2:6] = 3
    lab[10:12, 10:12, 3:5] = 7
    out, _ = resample_to_spacing(lab, aff, (1.0, 1.0, 1.0), order=0)
    assert out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 3, 7}
    assert 3 in out


def test_crop_moves_affine():
    aff = AFFINES["flipped"]
    data, at = _marker_volume()
    box = foreground_bbox(data > 0, margin=1)
    assert box == (slice(2, 5), slice(5, 8), slice(1, 4))
    out, new_aff = crop(data, aff, box)
    (new_at,) = np.argwhere(out == 1.0)
    np.testing.assert_allclose(voxel_to_world(new_aff, [new_at]), voxel_to_world(aff, [at]))
    assert foreground_bbox(np.zeros((3, 3, 3), bool)) is None


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 2.0, 1.3)])
def test_separable_resampling_matches_scipy(order, spacing):
    from scipy import ndimage

    from medflow.data.geometry import resampled_grid

    aff = AFFINES["anisotropic"]
    data = np.random.default_rng(1).normal(size=(17, 13, 9)).astype(np.float32)
    if order == 0:
        data = (data > 0).astype(np.uint8) + (data > 1)
    out, _ = resample_to_spacing(data, aff, spacing, order=order)
    _, shape, scale, offset = resampled_grid(aff, data.shape, spacing)
    ref = ndimage.affine_transform(data if order == 0 else data, scale, offset=offset, output_shape=shape,
                                   order=order, mode="nearest", prefilter=False)
    assert out.dtype == (np.uint8 if order == 0 else np.float32)
    if order == 0:
        # At exact half-voxel ties either neighbour is nearest; float rounding decides. Compare the rest.
        coords = [np.arange(n) * s + o for n, s, o in zip(shape, scale, offset)]
        tie = [np.abs(c - np.floor(c) - 0.5) < 1e-6 for c in coords]
        keep = ~(tie[0][:, None, None] | tie[1][None, :, None] | tie[2][None, None, :])
        np.testing.assert_array_equal(out[keep], ref[keep])
    else:
        np.testing.assert_allclose(out, ref, atol=1e-5)
