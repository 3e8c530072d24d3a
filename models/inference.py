"""Whole-volume inference by sliding windows with Gaussian blending (as nnU-Net does).

A network trained on 2D slices or 3D patches sees the whole volume window by
window; overlapping windows are blended with a Gaussian importance map, so the
centre of a window (where the network saw most context) counts most. Optional
mirroring test-time augmentation averages predictions over flips.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """(*patch) float32 weights: a Gaussian centred on the window, peak 1, no zeros."""
    impulse = np.zeros(patch, dtype=np.float32)
    impulse[tuple(p // 2 for p in patch)] = 1
    w = ndimage.gaussian_filter(impulse, [p * sigma_scale for p in patch], mode="constant", cval=0)
    w /= w.max()
    return np.maximum(w, w[w > 0].min()).astype(np.float32)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets along one axis so windows of ``patch`` cover ``size`` with at least ``overlap``."""
    if size <= patch:
        return [0]
    n = int(np.ceil((size - patch) / (patch * (1 - overlap)))) + 1
    return sorted({int(round(s)) for s in np.linspace(0, size - patch, n)})


def sliding_window(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray, patch: Sequence[int],
                   n_classes: int, *, mode: str = "3d", slice_axis: int = 2, overlap: float = 0.5,
                   batch_size: int = 8, mirror_axes: Sequence[int] = ()) -> np.ndarray:
    """Class probabilities for a whole volume.

    Args:
        predict: maps a batch (B, *patch, C) float32 to probabilities (B, *patch, K).
        image: (C, X, Y, Z) preprocessed volume.
        patch: window size: (H, W) in 2D mode (the two axes other than ``slice_axis``) or (D, H, W) in 3D.
        n_classes: K.
        mode: '2d' (every slice along ``slice_axis``) or '3d'.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        batch_size: windows per ``predict`` call.
        mirror_axes: window axes (0-based, spatial) to flip for test-time augmentation.

    Returns:
        (X, Y, Z, K) float32 probabilities (they sum to 1 where ``predict`` returns softmax).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1). Received: overlap={overlap}")
    fill = image.reshape(image.shape[0], -1).min(axis=1)  # pad like the training sampler does
    vol = np.moveaxis(image, 0, -1)  # (X, Y, Z, C)
    if mode == "2d":
        items = np.moveaxis(vol, slice_axis, 0)  # (N, H, W, C)
    elif mode == "3d":
        items = vol[None]
    else:
        raise ValueError(f"mode must be '2d' or '3d'. Received: mode={mode!r}")
    spatial = items.shape[1:-1]
    if len(patch) != len(spatial):
        raise ValueError(f"patch {tuple(patch)} does not match {mode} windows over {spatial}")
    padded = tuple(max(s, p) for s, p in zip(spatial, patch))
    if padded != spatial:
        buf = np.empty((items.shape[0], *padded, items.shape[-1]), dtype=np.float32)
        buf[...] = fill
        buf[(slice(None), *(slice(0, s) for s in spatial))] = items
        items = buf
    weight = gaussian_importance(patch)
    acc = np.zeros((items.shape[0], *padded, n_classes), dtype=np.float32)
    norm = np.zeros(padded, dtype=np.float32)
    windows = [tuple(slice(s, s + p) for s, p in zip(starts, patch))
               for starts in itertools.product(*(window_starts(n, p, overlap) for n, p in zip(padded, patch)))]
    for w in windows:
        norm[w] += weight
    flips = [()] + [c for r in range(1, len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)]
    tasks = [(i, w) for i in range(items.shape[0]) for w in windows]
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start:start + batch_size]
        x = np.stack([items[(i, *w)] for i, w in chunk]).astype(np.float32, copy=False)
        probs = np.zeros((len(chunk), *patch, n_classes), dtype=np.float32)
        for axes in flips:
            ax = tuple(a + 1 for a in axes)
            out = np.asarray(predict(np.flip(x, ax) if ax else x), dtype=np.float32)
            probs += np.flip(out, ax) if ax else out
        probs *= weight[..., None] / len(flips)
        for (i, w), p in zip(chunk, probs):
            acc[(i, *w)] += p
    acc /= norm[..., None]
    acc = acc[(slice(None), *(slice(0, s) for s in spatial))]
    if mode == "2d":
        return np.ascontiguousarray(np.moveaxis(acc, 0, slice_axis))
    return acc[0]


def keras_predictor(model) -> Callable[[np.ndarray], np.ndarray]:
    """``predict(x) -> y`` from a Keras model (inference mode, no per-call retracing); ``y`` is
    ``{output name: array}`` for a model with several outputs, as every runtime returns it."""
    def predict(x: np.ndarray):
        y = model.predict_on_batch(np.asarray(x, dtype=np.float32))
        return {k: np.asarray(v) for k, v in y.items()} if isinstance(y, dict) else np.asarray(y)
    predict.model = model  # explanations that need gradients (Grad-CAM) reach the model through it
    return predict
