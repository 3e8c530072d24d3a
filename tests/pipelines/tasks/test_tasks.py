"""The task plug-ins: one per family, each owning its crops, columns and inputs."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.inference.plan import InferencePlan, InferenceSettings, Window
from medflow.tasks import TASKS, task_for
from medflow.tasks.base import VolumeCase, cell
from medflow.tasks.classification import crop_centres
from tests.helpers import make_affine, preprocess_plan, save


def _cls_plan(crop="random", samples=3, seed=0):
    return InferencePlan("classification", (6, 6, 4, 1), classes=("a", "b"), channels=("MR",),
                         preprocess=preprocess_plan(), window=Window("3d", (6, 6, 4), 2, crop),
                         inference=InferenceSettings(0.5, 2, (), samples, seed))


def test_one_task_per_family():
    assert set(TASKS) == {"segmentation", "classification", "reconstruction"}
    assert all(t.family == name for name, t in TASKS.items())
    with pytest.raises(ValueError, match="model.json: unknown model family 'detection'"):
        task_for("detection", "model.json")


def test_crop_centres_depend_only_on_the_plan_and_shape():
    a, b = crop_centres(_cls_plan(), (20, 18, 12)), crop_centres(_cls_plan(), (20, 18, 12))
    assert a == b and len(a) == 3 and all(0 <= c[i] < s for c in a for i, s in enumerate((20, 18, 12)))
    assert crop_centres(_cls_plan(seed=1), (20, 18, 12)) != a
    assert crop_centres(_cls_plan(crop="center"), (20, 18, 12)) == [[10, 9, 6]]


def test_classifier_averages_its_crops():
    plan = _cls_plan(samples=4)
    case = VolumeCase([np.random.default_rng(0).normal(size=(12, 10, 8)).astype(np.float32)], make_affine())
    seen = []

    def net(x):  # a "probability" that differs per crop: the crop's mean squashed into (0, 1)
        seen.append(x.shape)
        p = 1 / (1 + np.exp(-x.mean(axis=(1, 2, 3, 4))))
        return np.stack([p, 1 - p], axis=1)
    probs = TASKS["classification"].infer(plan, net, case)
    assert seen == [(2, 6, 6, 4, 1), (2, 6, 6, 4, 1)]  # batch_size 2, 4 crops
    crops = TASKS["classification"].crops(plan, case)
    assert crops.shape == (4, 6, 6, 4, 1) and not np.allclose(crops[0], crops[1])
    per_crop = net(crops)
    assert np.ptp(per_crop[:, 0]) > 1e-4  # the crops disagree, so a wrong reduction would show
    np.testing.assert_allclose(probs, per_crop.mean(axis=0), rtol=1e-6)


def test_volume_rows_and_their_errors(tmp_path):
    task, plan = TASKS["segmentation"], _cls_plan()
    path = tmp_path / "x.nii.gz"
    save(path, np.ones((4, 4, 4), np.float32), make_affine())
    case = task.case_from_row(plan, {"path": str(path)})
    assert case.reference == str(path) and case.channels[0].shape == (4, 4, 4)
    blob = __import__("base64").b64encode(path.read_bytes()).decode()
    assert task.case_from_row(plan, {"nifti_b64": blob, "path": float("nan")}).reference is None
    arr = task.case_from_row(plan, {"image": np.zeros((3, 3, 3)).tolist(), "affine": np.eye(4).tolist()})
    assert arr.channels[0].shape == (3, 3, 3)
    with pytest.raises(ValueError, match="needs its affine"):
        task.case_from_row(plan, {"image": [[[0.0]]]})
    with pytest.raises(ValueError, match="invertible 4x4"):
        task.case_from_row(plan, {"image": [[[0.0]]], "affine": np.zeros((4, 4)).tolist()})
    with pytest.raises(ValueError, match="no input"):
        task.case_from_row(plan, {"case": "x"})
    assert cell({"a": ""}, "a") is None and cell({"a": 0.0}, "a") == 0.0


def test_reconstruction_batches_and_checks_the_geometry():
    task = TASKS["reconstruction"]
    plan = InferencePlan("reconstruction", (5, 3), geometry={"image_size": 4})
    calls = []

    def net(x):
        calls.append(len(x))
        return np.zeros((len(x), 4, 4, 1), np.float32) + x.sum(axis=(1, 2))[:, None, None, None]
    out = task.infer(plan, net, np.ones((5, 5, 3), np.float32), batch_size=2)
    assert out.shape == (5, 4, 4) and calls == [2, 2, 1] and np.all(out == 15)
    assert task.infer(plan, net, np.ones((5, 3))).shape == (1, 4, 4)
    with pytest.raises(ValueError, match=r"sinogram shape \(3, 5\), the model expects \(5, 3\)"):
        task.infer(plan, net, np.ones((3, 5)))
    with pytest.raises(ValueError, match="give path or sinogram"):
        task.case_from_row(plan, {})


def test_each_family_declares_its_served_columns():
    seg = InferencePlan("segmentation", (16, 16, 1), classes=("background", "gm", "wm"), channels=("MR",))
    _, out = TASKS["segmentation"].signature(seg)
    assert [c[0] for c in out] == ["labels_nifti_b64", "volume_ml_gm", "volume_ml_wm"]
    ins, out = TASKS["classification"].signature(_cls_plan())
    assert [c[0] for c in out] == ["class", "p_a", "p_b"] and ("image", ("array", 3), False) in ins
    ins, out = TASKS["reconstruction"].signature(InferencePlan("reconstruction", (5, 3)))
    assert [c[0] for c in ins] == ["path", "sinogram"] and out == [("image", ("array", 2), False)]
