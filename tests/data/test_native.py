"""Native-space round trip: preprocess without a label, predict, map back onto the input's own grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medflow.data.native import plan_from_json, prepare, to_native, write_like
from medflow.models.inference import sliding_window
from medflow.models.metrics import confusion_matrix, overlap_from_confusion
from tests.helpers import make_affine, preprocess_plan, save


def _bright_ball(shape, affine, centre_mm, radius_mm):
    """Head-like volume: a dim ellipsoid 'head' holding a bright ball at a world position."""
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    ball = (np.linalg.norm(xyz - centre_mm, axis=1) < radius_mm).reshape(shape)
    centre_vox = (np.array(shape) - 1) / 2
    head = (np.linalg.norm((ijk - centre_vox) / (np.array(shape) * 0.45), axis=1) < 1).reshape(shape)
    image = np.where(head, 300.0, 0.0) + np.where(ball, 700.0, 0.0)
    return image.astype(np.float32), ball


def _ball_model(x):  # bright voxels (z-scored) are class 1
    p1 = (x[..., 0] > 1.0).astype(np.float32)
    return np.stack([1 - p1, p1], -1)


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_prediction_lands_on_the_native_grid(mode):
    affine = make_affine(spacing=(1.5, 0.8, 2.5), codes="LPS", origin=(30.0, -12.0, 7.5), perm=(1, 0, 2))
    shape = (28, 40, 16)
    centre = affine[:3, :3] @ np.array([16.0, 18.0, 9.0]) + affine[:3, 3]  # off-centre on purpose
    image, ball = _bright_ball(shape, affine, centre, 7.0)
    plan = preprocess_plan(normalization=("mr",))
    pre, meta = prepare([image], affine, plan)
    assert meta["axcodes"] == "RAS" and pre.shape[1:] != shape
    patch = (16, 16) if mode == "2d" else (16, 16, 16)
    probs = sliding_window(_ball_model, pre, patch, 2, mode=mode, slice_axis=2)
    native = to_native(probs, meta)
    assert native.shape == (*shape, 2)
    np.testing.assert_allclose(native.sum(-1), 1.0, atol=1e-5)
    pred = np.argmax(native, -1)
    dice = overlap_from_confusion(confusion_matrix(ball.astype(int), pred, 2))["dice"][1]
    assert dice > 0.9
    com_pred, com_true = np.argwhere(pred).mean(0), np.argwhere(ball).mean(0)
    np.testing.assert_allclose(com_pred, com_true, atol=0.5)  # aligned to within half a native voxel


def test_identity_grid_is_exact():
    affine = make_affine(spacing=(1.0, 1.0, 1.0), codes="RAS")
    image = np.random.default_rng(0).random((12, 10, 8)).astype(np.float32) + 1
    plan = preprocess_plan(normalization=("none",), crop_to_foreground=False)
    pre, meta = prepare([image], affine, plan)
    probs = np.stack([1 - pre[0] / 3, pre[0] / 3], -1)
    np.testing.assert_array_equal(to_native(probs, meta)[..., 1], image / 3)
    assert plan_from_json({**plan.to_json(), "classes": {"0": "bg"}}) == plan


def test_write_like_keeps_affine_and_header(tmp_path):
    affine = make_affine(codes="LPS", perm=(1, 0, 2))
    ref = save(tmp_path / "in.nii.gz", np.ones((5, 6, 7)) * 3.5, affine, np.float32)
    img = nib.load(str(ref))
    img.header["descrip"] = b"scanner X"
    nib.save(img, str(ref))
    label = np.zeros((5, 6, 7), np.uint8)
    label[1:3, 2:4, 3:5] = 2
    write_like(tmp_path / "out" / "in.nii.gz", label, ref)
    out = nib.load(str(tmp_path / "out" / "in.nii.gz"))
    np.testing.assert_allclose(out.affine, affine)
    assert out.get_data_dtype() == np.uint8 and out.header["descrip"].tobytes().startswith(b"scanner X")
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), label)
    assert not list((tmp_path / "out").glob(".tmp-*"))
    with pytest.raises(ValueError, match="does not match"):
        write_like(tmp_path / "bad.nii.gz", label[:2], ref)
