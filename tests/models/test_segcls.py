"""segcls: shapes, the lesion evidence it pools, its masked loss, serialization and export parity."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.models.losses import IGNORE, LesionDice, MaskedDiceBCELoss
from medflow.models.registry import LESION, PROBABILITIES, build_model
from medflow.models.runtimes import export_formats, load_keras, load_runtime, parity
from medflow.models.segcls import LesionEvidence

SMALL = {"depth": 2, "filters": 4, "max_filters": 8}


def test_outputs_and_shapes():
    model = build_model("segcls", (16, 16, 8, 1), 3, SMALL)
    assert sorted(model.output_names) == [LESION, PROBABILITIES]
    out = model.predict_on_batch(np.zeros((2, 16, 16, 8, 1), np.float32))
    assert out[LESION].shape == (2, 16, 16, 8, 1) and out[PROBABILITIES].shape == (2, 3)
    np.testing.assert_allclose(out[PROBABILITIES].sum(axis=1), 1.0, atol=1e-5)
    # the lesion head starts at a small prior, not at p = 0.5 everywhere
    assert float(out[LESION].max()) < 0.05
    with pytest.raises(ValueError, match="divisible"):
        build_model("segcls", (18, 16, 8, 1), 3, SMALL)
    assert build_model("segcls", (16, 16, 2), 2, SMALL).output_names  # 2D works too


def test_evidence_reads_presence_volume_and_signed_contrast():
    image = np.zeros((2, 12, 12, 12, 1), np.float32)
    p = np.zeros((2, 12, 12, 12, 1), np.float32)
    image[0, 5:7, 5:7, 5:7] = 3.0   # bright lesion
    image[1, 5:7, 5:7, 5:7] = -3.0  # dark lesion
    p[:, 5:7, 5:7, 5:7] = 1.0
    feats = np.asarray(LesionEvidence(topk=8, context=5)([p, image]))
    assert feats.shape == (2, 4)
    np.testing.assert_allclose(feats[:, 0], 1.0)  # max p
    np.testing.assert_allclose(feats[:, 1], 1.0)  # mean of the top 8: the lesion
    np.testing.assert_allclose(feats[:, 2], np.log(9.0), rtol=1e-5)  # log(1 + 8 voxels)
    assert feats[0, 3] > 1.0 and feats[1, 3] < -1.0  # bright vs dark under the lesion
    np.testing.assert_allclose(feats[0, 3], -feats[1, 3], rtol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        LesionEvidence(context=4)


def test_masked_loss_ignores_unknown_voxels():
    rng = np.random.default_rng(0)
    pred = rng.uniform(0.01, 0.99, (2, 6, 6, 6, 1)).astype(np.float32)
    truth = np.zeros((2, 6, 6, 6), np.uint8)
    truth[0, 2:4, 2:4, 2:4] = 1
    loss = MaskedDiceBCELoss()
    weak = truth.copy()
    weak[1] = IGNORE
    other = pred.copy()
    other[1] = rng.uniform(0.01, 0.99, (6, 6, 6, 1))
    # with case 1 unknown, what the network predicts there changes nothing
    a, b = float(loss(weak, pred)), float(loss(weak, other))
    assert a == pytest.approx(b, rel=1e-6)
    assert float(loss(truth, pred)) != pytest.approx(a, rel=1e-3)
    perfect = np.where(truth[..., None] == 1, 0.999, 0.001).astype(np.float32)
    assert float(loss(truth, perfect)) < 0.05
    assert float(loss(np.full_like(truth, IGNORE), pred)) == 0.0  # a batch of weak cases adds nothing
    dice = LesionDice()
    dice.update_state(truth, perfect)
    assert float(dice.result()) == pytest.approx(1.0)


def test_case_dice_counts_each_lesion_alike():
    """A large lesion found and a small one missed: the batch Dice barely notices the miss, the case Dice
    charges it a whole Dice; with every voxel known per case the two agree on a single case."""
    truth = np.zeros((2, 8, 8, 8), np.uint8)
    truth[0, 1:7, 1:7, 1:7] = 1  # 216 voxels, found
    truth[1, 3:5, 3:5, 3:5] = 1  # 8 voxels, missed
    pred = np.where(truth[..., None] == 1, 0.99, 0.01).astype(np.float32)
    pred[1] = 0.01
    batch, case = MaskedDiceBCELoss(ce_weight=0.0), MaskedDiceBCELoss(ce_weight=0.0, dice="case")
    assert float(batch(truth, pred)) < 0.1
    assert float(case(truth, pred)) > 0.45  # mean of ~0 and ~1
    np.testing.assert_allclose(float(case(truth[:1], pred[:1])), float(batch(truth[:1], pred[:1])), rtol=1e-5)
    weak = truth.copy()
    weak[1] = IGNORE  # a weakly labelled case adds no Dice term of its own
    assert float(case(weak, pred)) < 0.1
    assert MaskedDiceBCELoss.from_config(case.get_config()).dice == "case"
    with pytest.raises(ValueError, match="batch"):
        MaskedDiceBCELoss(dice="voxel")


def test_round_trip_and_export_parity(tmp_path):
    model = build_model("segcls", (16, 16, 8, 1), 3, SMALL)
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 8, 1)).astype(np.float32)
    export_formats(model, tmp_path)
    again = load_keras(tmp_path / "model.keras")  # safe_mode=True
    ref = model.predict_on_batch(x)
    for runtime in ("keras", "saved_model", "onnx"):
        y = load_runtime(tmp_path, runtime)(x)
        assert sorted(y) == [LESION, PROBABILITIES]
        np.testing.assert_allclose(y[PROBABILITIES], ref[PROBABILITIES], atol=1e-5)
    np.testing.assert_allclose(again.predict_on_batch(x)[LESION], ref[LESION], atol=1e-6)
    drift = parity(tmp_path, x)
    assert max(drift["max_abs_diff"].values()) < 1e-4


def test_any_size_model_trains_on_patches_and_exports(tmp_path):
    """Built for any size (loader.train_patch_size), one model takes a training patch and a larger inference
    window alike, and every runtime agrees on the window."""
    model = build_model("segcls", (None, None, None, 1), 3, SMALL)
    rng = np.random.default_rng(2)
    patch = model.predict_on_batch(rng.normal(size=(2, 8, 8, 8, 1)).astype(np.float32))
    assert patch[LESION].shape == (2, 8, 8, 8, 1) and patch[PROBABILITIES].shape == (2, 3)
    x = rng.normal(size=(2, 16, 12, 8, 1)).astype(np.float32)
    ref = model.predict_on_batch(x)
    assert ref[LESION].shape == (2, 16, 12, 8, 1)
    export_formats(model, tmp_path)
    for runtime in ("keras", "saved_model", "onnx"):
        y = load_runtime(tmp_path, runtime)(x)
        np.testing.assert_allclose(y[PROBABILITIES], ref[PROBABILITIES], atol=1e-5)
        np.testing.assert_allclose(y[LESION], ref[LESION], atol=1e-5)


def test_topk_counts_voxels_whatever_the_size():
    """The top-k mean reads the same lesion on a small patch and on a large volume."""
    layer = LesionEvidence(topk=4, context=3)
    for size in (8, 24):
        p = np.zeros((1, size, size, size, 1), np.float32)
        p[0, 2:4, 2:4, 2] = 1.0  # 4 voxels
        image = np.zeros_like(p)
        assert float(np.asarray(layer([p, image]))[0, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="topk"):
        LesionEvidence(topk=0)
