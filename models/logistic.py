"""Multinomial logistic regression in NumPy, and refitting a network's softmax layer with it.

Used by the normative baseline (models/normative.py) and by :func:`refit_softmax_layer`: a
classifier trained on patches but run on whole volumes (segcls with ``loader.train_patch_size``)
sees features at inference that its class layer never saw in training (a whole head has more
voxels to find a false lesion in than a patch). Refitting that last layer on the training cases'
whole-volume features puts the decision where inference needs it.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize


def softmax(logits: np.ndarray) -> np.ndarray:
    """(N, K) row-wise softmax."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, sample_weight=None) -> np.ndarray:
    """(F + 1, K) weights of a ridge-penalized multinomial logistic regression (L-BFGS).

    Args:
        x: (N, F + 1) features whose last column is 1 (the bias, left unpenalized).
        y: (N,) class indices.
        sample_weight: (N,) weights of the cases in the mean loss (default: all 1).
    """
    onehot = np.eye(n_classes)[y]
    w_case = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    w_case = w_case / w_case.sum()
    penalty = np.ones((x.shape[1], n_classes))
    penalty[-1] = 0.0

    def loss(w):
        w = w.reshape(x.shape[1], n_classes)
        p = softmax(x @ w)
        value = -np.sum(w_case * np.sum(onehot * np.log(p + 1e-12), axis=1)) + 0.5 * l2 * np.sum(penalty * w**2)
        grad = x.T @ (w_case[:, None] * (p - onehot)) + l2 * penalty * w
        return value, grad.ravel()

    res = optimize.minimize(loss, np.zeros(x.shape[1] * n_classes), jac=True, method="L-BFGS-B")
    return res.x.reshape(x.shape[1], n_classes)


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """(N,) case weights that give every class present the same total weight."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return len(y) / (np.count_nonzero(counts) * counts[y])


def refit_softmax_layer(model, layer_name: str, features: np.ndarray, y: np.ndarray, n_classes: int, *,
                        l2: float = 1e-2, balanced: bool = True) -> dict:
    """Set the Dense softmax layer ``layer_name`` of ``model`` to the logistic regression of ``y`` on
    ``features`` (N, F), the layer's own inputs on the cases to fit.

    The regression runs on standardized features (so one ``l2`` suits features of any scale), and the
    standardization is folded into the layer's kernel and bias: the model stays the same graph.

    Returns:
        {"cases", "l2", "accuracy_before", "accuracy_after"} on the fitted cases (balanced accuracy).
    """
    layer = model.get_layer(layer_name)
    kernel, bias = layer.get_weights()
    if kernel.shape != (features.shape[1], n_classes):
        raise ValueError(f"layer {layer_name!r} maps {kernel.shape[0]} features to {kernel.shape[1]} classes; "
                         f"got features {features.shape} for {n_classes} classes")
    x = np.asarray(features, np.float64)
    centre, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)  # a constant feature: its weight stays 0 under the ridge
    z = np.hstack([(x - centre) / scale, np.ones((len(x), 1))])
    w = fit_softmax(z, y, n_classes, l2, balanced_weights(y, n_classes) if balanced else None)
    new_kernel = w[:-1] / scale[:, None]
    new_bias = w[-1] - centre @ new_kernel
    before = _balanced_accuracy(y, x @ kernel + bias, n_classes)
    layer.set_weights([new_kernel.astype(kernel.dtype), new_bias.astype(bias.dtype)])
    return {"cases": int(len(x)), "l2": float(l2), "accuracy_before": before,
            "accuracy_after": _balanced_accuracy(y, x @ new_kernel + new_bias, n_classes)}


def _balanced_accuracy(y: np.ndarray, logits: np.ndarray, n_classes: int) -> float:
    pred = np.argmax(logits, axis=1)
    recalls = [np.mean(pred[y == k] == k) for k in range(n_classes) if np.any(y == k)]
    return float(np.mean(recalls))
