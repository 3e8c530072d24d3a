"""Intensity normalization per modality.

CT values are physical (Hounsfield units), so a fixed window is right and the
same HU maps to the same network input in every scanner. MR values are
arbitrary per scan, so each scan is standardized over its own foreground after
clipping outliers (bright vessels, spikes) that would dominate the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.filters import threshold_otsu


def clip_hu(image: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Clip a CT image to the HU ``window`` (lo, hi) and scale it to [0, 1].

    Args:
        image: array of any shape, in HU.
        window: (lo, hi) with lo < hi.

    Returns:
        float32 array of the same shape in [0, 1].
    """
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"CT window must have lo < hi. Received: window={tuple(window)}")
    out = np.clip(image.astype(np.float32, copy=False), lo, hi)
    return (out - lo) / (hi - lo)


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Head/body mask of an MR image: voxels above the Otsu threshold.

    Robust to a noisy background (Rician noise makes "nonzero" useless), and it
    needs no label, so inference computes the same mask as training.
    """
    finite = image[::2, ::2, ::2] if image.ndim == 3 else image
    if finite.max() <= finite.min():
        return np.ones(image.shape, dtype=bool)
    return image > threshold_otsu(finite.ravel())


def zscore_foreground(
    image: np.ndarray, mask: np.ndarray | None = None, percentiles: Sequence[float] = (0.5, 99.5)
) -> tuple[np.ndarray, dict]:
    """Clip to foreground percentiles, then z-score with the foreground mean and sd.

    Args:
        image: (X, Y, Z) MR image.
        mask: boolean foreground mask of the same shape; Otsu when None.
        percentiles: (low, high) percentiles of the foreground used to clip.

    Returns:
        (normalized float32 image, stats) where stats holds the clip bounds,
        mean and sd used, so the same mapping can be applied at inference.
    """
    if mask is None:
        mask = foreground_mask(image)
    values = image[mask] if mask.any() else image.ravel()
    lo, hi = np.percentile(values, percentiles)
    clipped = np.clip(image.astype(np.float32, copy=False), lo, hi)
    fg = np.clip(values.astype(np.float32), lo, hi)
    mean, sd = float(fg.mean()), float(fg.std())
    out = (clipped - mean) / max(sd, 1e-8)
    return out.astype(np.float32, copy=False), {"clip": [float(lo), float(hi)], "mean": mean, "sd": sd}


def normalize(image: np.ndarray, scheme: str, *, ct_window=(-1000.0, 1000.0), mr_percentiles=(0.5, 99.5)):
    """Normalize one channel by ``scheme`` ('ct', 'mr' or 'none').

    Returns:
        (float32 image, stats dict describing the mapping).
    """
    if scheme == "ct":
        return clip_hu(image, ct_window), {"scheme": "ct", "window": [float(w) for w in ct_window]}
    if scheme == "mr":
        out, stats = zscore_foreground(image, percentiles=mr_percentiles)
        return out, {"scheme": "mr", **stats}
    if scheme == "none":
        return image.astype(np.float32, copy=False), {"scheme": "none"}
    raise ValueError(f"Unknown normalization scheme. Received: scheme={scheme!r}")
