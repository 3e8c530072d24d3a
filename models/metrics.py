"""Segmentation metrics on label maps in physical space (numpy; the Keras training metrics are in losses.py).

Overlap metrics come from one voxel confusion matrix per case; surface distances
use Euclidean distance transforms with the voxel spacing, so they are in mm on
anisotropic grids too. Conventions (as in nnU-Net's and MONAI's evaluators):

- a class absent from both truth and prediction gives NaN (left out of means);
- HD95 is NaN when both masks are empty and ``inf`` when exactly one is;
- HD95 is the 95th percentile of the pooled surface distances in both
  directions (as medpy and the BraTS toolkit compute it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts: rows are true classes, columns predicted ones.

    Args:
        truth, pred: integer label maps of the same shape, values in [0, n_classes).
    """
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    t = truth.astype(np.int64, copy=False).ravel()
    p = pred.astype(np.int64, copy=False).ravel()
    if t.size and (max(t.max(), p.max()) >= n_classes or min(t.min(), p.min()) < 0):
        raise ValueError(f"labels outside [0, {n_classes})")
    return np.bincount(t * n_classes + p, minlength=n_classes**2).reshape(n_classes, n_classes)


def overlap_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class Dice, IoU, true and predicted voxel counts from a confusion matrix.

    Returns:
        dict of (K,) arrays: dice, iou, n_true, n_pred (NaN overlap where the class is absent from both).
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    n_true, n_pred = cm.sum(1), cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(n_true + n_pred > 0, 2 * tp / (n_true + n_pred), np.nan)
        iou = np.where(n_true + n_pred - tp > 0, tp / (n_true + n_pred - tp), np.nan)
    return {"dice": dice, "iou": iou, "n_true": n_true, "n_pred": n_pred}


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one 6-neighbour outside it (the array border counts as outside)."""
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~eroded


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b``, and from ``b`` to ``a``.

    Both masks must be non-empty. Work is limited to the bounding box of their union
    (plus one voxel), so whole native volumes stay cheap.
    """
    union = a | b
    box = tuple(slice(max(0, int(ix.min()) - 1), int(ix.max()) + 2) for ix in np.nonzero(union))
    a, b = a[box], b[box]
    sa, sb = _surface(a), _surface(b)
    # The distance transform measures to the nearest zero, so feed it "not surface".
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return to_b[sa], to_a[sb]


def hd95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm between boolean masks ``a`` and ``b``."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    has_a, has_b = a.any(), b.any()
    if not has_a and not has_b:
        return float("nan")
    if not has_a or not has_b:
        return float("inf")
    d_ab, d_ba = surface_distances(a, b, spacing)
    return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))


def case_metrics(truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float], classes: Sequence[str],
                 *, surface: bool = True) -> tuple[list[dict], np.ndarray]:
    """Per-class metrics of one case on its own grid.

    Args:
        truth, pred: (X, Y, Z) integer label maps; class 0 is background.
        spacing: voxel size in mm along each array axis.
        classes: class names by label value (background first).
        surface: compute HD95 (the expensive part).

    Returns:
        (one row per foreground class: class, dice, iou, hd95_mm, volume_true_ml, volume_pred_ml,
        volume_diff_ml, volume_diff_pct; the case's confusion matrix (K, K)).
    """
    k = len(classes)
    cm = confusion_matrix(truth, pred, k)
    ov = overlap_from_confusion(cm)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    rows = []
    for c in range(1, k):
        v_true, v_pred = ov["n_true"][c] * voxel_ml, ov["n_pred"][c] * voxel_ml
        rows.append({
            "class": classes[c], "dice": float(ov["dice"][c]), "iou": float(ov["iou"][c]),
            "hd95_mm": hd95(truth == c, pred == c, spacing) if surface else float("nan"),
            "volume_true_ml": v_true, "volume_pred_ml": v_pred, "volume_diff_ml": v_pred - v_true,
            "volume_diff_pct": 100.0 * (v_pred - v_true) / v_true if v_true > 0 else float("nan"),
        })
    return rows, cm


def row_normalize(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (recall per true class); empty rows stay 0."""
    cm = np.asarray(cm, dtype=np.float64)
    sums = cm.sum(1, keepdims=True)
    return np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)


# --- classification -------------------------------------------------------------------------------


def classification_report(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support, macro one-vs-rest ROC-AUC.

    Args:
        y_true: (N,) integer classes.
        probs: (N, K) class probabilities; the prediction is their argmax.
        classes: K names.

    Returns:
        dict with accuracy, balanced_accuracy, macro_f1, roc_auc_macro_ovr (NaN when some class has
        no positive or no negative case), per_class {name: {precision, recall, f1, support, roc_auc}},
        confusion (K, K) list.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    pred = probs.argmax(1)
    cm = np.bincount(y_true * k + pred, minlength=k * k).reshape(k, k)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)  # scikit-learn's zero_division=0
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    aucs = np.array([binary_auc(y_true == c, probs[:, c]) for c in range(k)])
    present = support > 0
    return {
        "n": int(y_true.size),
        "accuracy": float(tp.sum() / max(y_true.size, 1)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "roc_auc_macro_ovr": float(aucs.mean()) if np.isfinite(aucs).all() else float("nan"),
        "per_class": {name: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                             "support": int(support[c]), "roc_auc": float(aucs[c])} for c, name in enumerate(classes)},
        "confusion": cm.tolist(),
    }


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic (ties count half); NaN without both classes."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def image_quality(truth: np.ndarray, recon: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM of one (H, W) reconstruction, as DIVal scores them.

    Both use data_range = max(truth) - min(truth); SSIM is scikit-image's
    (7 x 7 uniform window), which DIVal calls.
    """
    from skimage.metrics import structural_similarity

    truth = np.asarray(truth, dtype=np.float64)
    recon = np.asarray(recon, dtype=np.float64)
    data_range = float(truth.max() - truth.min())
    mse = float(np.mean((truth - recon) ** 2))
    psnr = float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)
    return {"psnr": psnr, "ssim": float(structural_similarity(truth, recon, data_range=data_range))}
