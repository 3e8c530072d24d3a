"""A normative-model baseline for lesion classification, with no deep learning.

Fit: the voxelwise mean and standard deviation of the training set's normal
subjects (on the classifier's input grid, after preprocessing). Score a case:
its z-map against them, smoothed at lesion scale, inside the brain of the mean;
the means of its ``k`` most positive and ``k`` most negative z (a bright and a
dark lesion) and its extreme z are the features of a multinomial logistic
regression fitted on the training cases. Reported beside the networks, as
multi-Otsu is for segmentation: a network that cannot beat it has learned little.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medflow.data.intensity import foreground_mask
from medflow.models.logistic import fit_softmax, softmax


@dataclass
class NormativeBaseline:
    """A fitted baseline. Arrays are on the classifier's input grid (X, Y, Z).

    Attributes:
        mean, sd: voxelwise statistics of the normal training subjects (sd floored).
        brain: where z is read: the foreground of ``mean``, eroded by one voxel.
        sigma: Gaussian smoothing of the z-map, in voxels per axis.
        k: voxels averaged at each tail.
        centre, scale: feature standardization from the training cases.
        weights: (F + 1, K) logistic-regression weights (last row: bias).
    """

    mean: np.ndarray
    sd: np.ndarray
    brain: np.ndarray
    sigma: tuple[float, ...]
    k: int
    centre: np.ndarray | None = None
    scale: np.ndarray | None = None
    weights: np.ndarray | None = None

    def features(self, volume: np.ndarray) -> np.ndarray:
        """(4,) features of one (X, Y, Z) volume: top-k mean z, -bottom-k mean z, max z, -min z."""
        z = ndimage.gaussian_filter((np.asarray(volume, np.float64) - self.mean) / self.sd, self.sigma)[self.brain]
        if z.size < 2:
            raise ValueError(f"the brain mask has {z.size} voxel(s) in the crop; the baseline needs at least 2")
        k = min(self.k, z.size // 2)  # both tails fit, however small the brain
        part = np.partition(z, (k - 1, z.size - k))
        return np.array([part[-k:].mean(), -part[:k].mean(), z.max(), -z.min()])

    def predict(self, volumes) -> np.ndarray:
        """(N, K) class probabilities of (N, X, Y, Z) volumes."""
        f = (np.stack([self.features(v) for v in volumes]) - self.centre) / self.scale
        return softmax(np.hstack([f, np.ones((len(f), 1))]) @ self.weights)


def fit_normative(volumes: np.ndarray, targets, n_classes: int, normal: int, *, sigma_vox, k: int,
                  l2: float = 1e-2) -> NormativeBaseline:
    """Fit the baseline on training volumes (N, X, Y, Z) with class indices ``targets``.

    Args:
        normal: the class index of normal subjects (their statistics are the norm).
        sigma_vox: smoothing in voxels (a float or one per axis).
        k: voxels averaged at each tail (about one lesion's volume).
        l2: ridge penalty of the logistic regression.

    A class without training cases keeps a near-zero probability (the ridge holds its weights at 0
    while the others' logits grow).

    Raises:
        ValueError: fewer than two normal subjects.
    """
    volumes, targets = np.asarray(volumes, np.float64), np.asarray(targets, dtype=int)
    normals = volumes[targets == normal]
    if len(normals) < 2:
        raise ValueError(f"the normative baseline needs at least 2 normal training subjects, got {len(normals)}")
    mean, sd = normals.mean(0), normals.std(0, ddof=1)
    sd = np.maximum(sd, 0.1 * float(np.median(sd[sd > 0])) if np.any(sd > 0) else 1.0)
    brain = ndimage.binary_erosion(foreground_mask(mean.astype(np.float32)))
    if not brain.any():
        brain = np.ones(mean.shape, bool)
    sigma = tuple(float(s) for s in np.broadcast_to(sigma_vox, (mean.ndim,)))
    model = NormativeBaseline(mean, sd, brain, sigma, int(k))
    # Leave-one-out z for the normal subjects' own features: scored against the norm they helped make,
    # they would look more normal than any unseen normal subject.
    feats, which = [], np.cumsum(targets == normal) - 1  # each normal subject's row in ``normals``
    for i, v in enumerate(volumes):
        if targets[i] == normal:
            rest = np.delete(normals, which[i], axis=0)
            loo = NormativeBaseline(rest.mean(0), np.maximum(rest.std(0, ddof=1), sd.min()), brain, sigma, int(k))
            feats.append(loo.features(v))
        else:
            feats.append(model.features(v))
    feats = np.stack(feats)
    model.centre, model.scale = feats.mean(0), feats.std(0) + 1e-9
    x = np.hstack([(feats - model.centre) / model.scale, np.ones((len(feats), 1))])
    model.weights = fit_softmax(x, targets, n_classes, l2)
    return model
