"""Classical baselines reported beside the networks, on the same cases and metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.filters import threshold_multiotsu


def multi_otsu(image: np.ndarray, mask: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Multi-Otsu tissue classes inside ``mask``.

    Args:
        image: (X, Y, Z) intensities.
        mask: (X, Y, Z) bool region to classify (e.g. the brain); outside stays 0.
        labels: label value of each intensity class, darkest first (for T1: CSF, GM, WM).

    Returns:
        (X, Y, Z) uint8 label map.
    """
    out = np.zeros(image.shape, dtype=np.uint8)
    values = image[mask]
    if values.size == 0:
        return out
    if np.unique(values).size < len(labels):
        raise ValueError(f"{len(labels)} classes need as many distinct intensities inside the mask")
    thresholds = threshold_multiotsu(values, classes=len(labels))
    out[mask] = np.asarray(labels, dtype=np.uint8)[np.digitize(values, thresholds)]
    return out
