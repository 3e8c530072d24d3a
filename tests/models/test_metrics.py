"""Segmentation metrics against hand-computed values and an independent brute-force computation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from medflow.models.baselines import multi_otsu
from medflow.models.metrics import case_metrics, confusion_matrix, hd95, overlap_from_confusion, row_normalize


def _brute_hd95(a, b, spacing):
    """Surface = voxels with a 6-neighbour outside (array border outside); all-pairs distances in mm."""
    def surface_points(m):
        p = np.pad(m, 1)
        inner = p[1:-1, 1:-1, 1:-1]
        neigh = [p[2:, 1:-1, 1:-1], p[:-2, 1:-1, 1:-1], p[1:-1, 2:, 1:-1], p[1:-1, :-2, 1:-1],
                 p[1:-1, 1:-1, 2:], p[1:-1, 1:-1, :-2]]
        surf = inner & ~np.logical_and.reduce(neigh)
        return np.argwhere(surf) * np.asarray(spacing)
    pa, pb = surface_points(a), surface_points(b)
    d = cdist(pa, pb)
    return np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)


def test_dice_iou_hand_computed():
    truth = np.zeros((4, 4, 1), int)
    pred = np.zeros((4, 4, 1), int)
    truth[:2, :2] = 1          # 4 voxels
    pred[:2, :3] = 1           # 6 voxels, 4 shared
    truth[3, 3] = 2
    cm = confusion_matrix(truth, pred, 3)
    assert cm.tolist() == [[9, 2, 0], [0, 4, 0], [1, 0, 0]]
    ov = overlap_from_confusion(cm)
    assert ov["dice"][1] == pytest.approx(2 * 4 / (4 + 6))
    assert ov["iou"][1] == pytest.approx(4 / 6)
    assert ov["dice"][2] == 0.0
    rows, _ = case_metrics(truth, pred, (2.0, 1.0, 1.0), ["bg", "a", "b"], surface=False)
    assert rows[0]["volume_true_ml"] == pytest.approx(4 * 2 / 1000)
    assert rows[0]["volume_diff_pct"] == pytest.approx(50.0)
    assert rows[1]["volume_pred_ml"] == 0 and rows[1]["volume_diff_pct"] == pytest.approx(-100.0)


def test_absent_class_is_nan_and_row_normalize():
    truth = np.zeros((3, 3, 3), int)
    rows, cm = case_metrics(truth, truth, (1, 1, 1), ["bg", "x"])
    assert np.isnan(rows[0]["dice"]) and np.isnan(rows[0]["hd95_mm"])
    assert row_normalize(np.array([[2, 2], [0, 0]])).tolist() == [[0.5, 0.5], [0.0, 0.0]]


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.5)])
def test_hd95_matches_brute_force(spacing):
    rng = np.random.default_rng(0)
    a = np.zeros((18, 16, 14), bool)
    b = np.zeros_like(a)
    a[3:12, 4:11, 2:9] = True
    b[5:14, 3:10, 4:12] = True
    b[rng.random(b.shape) < 0.02] = True  # scattered outliers stretch the tail
    assert hd95(a, b, spacing) == pytest.approx(_brute_hd95(a, b, spacing), rel=1e-9)


def test_hd95_shifted_cube_and_empty():
    a = np.zeros((20, 20, 20), bool)
    a[5:10, 5:10, 5:10] = True
    b = np.roll(a, 3, axis=0)
    # every surface voxel of a face moved by 3 voxels of 2 mm; the 95th percentile is that shift
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert hd95(a, a, (1, 1, 1)) == 0.0
    assert hd95(a, np.zeros_like(a), (1, 1, 1)) == float("inf")


def test_multi_otsu_orders_classes_by_intensity():
    rng = np.random.default_rng(1)
    truth = rng.integers(1, 4, (10, 10, 10))
    image = np.choose(truth - 1, [20.0, 60.0, 100.0]) + rng.normal(0, 1.5, truth.shape)
    mask = np.ones(truth.shape, bool)
    mask[0] = False
    seg = multi_otsu(image, mask, [1, 2, 3])
    assert (seg[0] == 0).all() and (seg[mask] == truth[mask]).all()
    assert (multi_otsu(-image, mask, [3, 2, 1])[mask] == truth[mask]).all()


def test_classification_report_matches_scikit_learn():
    from sklearn import metrics as skm

    from medflow.models.metrics import classification_report

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3)) + 1.5 * np.eye(3)[y]
    logits[:5, 0] = logits[:5, 1]  # ties in the scores
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rep = classification_report(y, probs, ["a", "b", "c"])
    pred = probs.argmax(1)
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert rep["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert rep["roc_auc_macro_ovr"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert rep["confusion"] == skm.confusion_matrix(y, pred).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    for c, name in enumerate("abc"):
        got = rep["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p[c], r[c], f[c], s[c]))
    assert rep["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    one_class = classification_report(np.zeros(4, int), np.tile([0.6, 0.3, 0.1], (4, 1)), ["a", "b", "c"])
    assert np.isnan(one_class["roc_auc_macro_ovr"]) and one_class["accuracy"] == 1.0


def test_image_psnr_metric_equals_image_quality():
    from medflow.models.losses import ImagePSNR
    from medflow.models.metrics import image_quality

    rng = np.random.default_rng(0)
    truth = rng.random((3, 12, 12, 1)).astype(np.float32) * np.array([1, 2, 5], np.float32)[:, None, None, None]
    recon = truth + 0.05 * rng.standard_normal(truth.shape).astype(np.float32)
    metric = ImagePSNR()
    metric.update_state(truth[:2], recon[:2])
    metric.update_state(truth[2:], recon[2:])
    expected = np.mean([image_quality(t[..., 0], r[..., 0])["psnr"] for t, r in zip(truth, recon)])
    assert float(metric.result()) == pytest.approx(expected, rel=1e-5)
