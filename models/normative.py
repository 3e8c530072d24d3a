"""A normative-model baseline for lesion classification, with no deep learning.

Fit: align the training subjects onto one normal training subject (affine
registration, optional), then take the voxelwise mean of the normal subjects
(on the classifier's input grid, after preprocessing). Score a case: its
deviation from that mean inside the brain, high-passed (a bias field or a
gamma difference is smooth; a lesion is not), smoothed at lesion scale, and
divided by the normal subjects' own spread of that deviation: a z-map. The
means of its ``k`` most positive and ``k`` most negative z (a bright and a dark
lesion) and its extreme z are the features of a multinomial logistic
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
        mean: voxelwise mean of the (aligned) normal training subjects.
        sd: the normal subjects' root-mean-square deviation map (leave-one-out, floored).
        brain: where z is read: the foreground of ``mean`` with its holes filled, eroded by one voxel.
        sigma: Gaussian smoothing of the deviation, in voxels per axis.
        k: voxels averaged at each tail.
        highpass: Gaussian scale (voxels per axis) of the smooth part taken out of the deviation; None: none.
        template: the normal subject every case is registered onto; None: no registration.
        spacing: the voxel size in mm (registration works in mm).
        centre, scale: feature standardization from the training cases.
        weights: (F + 1, K) logistic-regression weights (last row: bias).
    """

    mean: np.ndarray
    sd: np.ndarray
    brain: np.ndarray
    sigma: tuple[float, ...]
    k: int
    highpass: tuple[float, ...] | None = None
    template: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    centre: np.ndarray | None = None
    scale: np.ndarray | None = None
    weights: np.ndarray | None = None

    def align(self, volumes, workers: int = 1) -> list[np.ndarray]:
        """(N, X, Y, Z) volumes registered onto the template (as they are without one)."""
        if self.template is None:
            return [np.asarray(v, np.float32) for v in volumes]
        from medflow.data.registration import align_all

        return align_all(volumes, self.template, self.spacing, workers=workers)

    def deviation(self, volume: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
        """(X, Y, Z) smoothed, high-passed deviation of an aligned volume from ``mean`` (default: the norm)."""
        brain = self.brain.astype(np.float64)
        r = (np.asarray(volume, np.float64) - (self.mean if mean is None else mean)) * brain
        if self.highpass is not None:  # the smooth part, by normalized convolution so the skull's edge adds nothing
            r -= ndimage.gaussian_filter(r, self.highpass) / np.maximum(ndimage.gaussian_filter(brain, self.highpass),
                                                                        1e-3) * brain
        return ndimage.gaussian_filter(r, self.sigma) * brain

    def features_of(self, z: np.ndarray) -> np.ndarray:
        """(4,) features of a z-map: top-k mean z, -bottom-k mean z, max z, -min z (inside the brain)."""
        z = z[self.brain]
        if z.size < 2:
            raise ValueError(f"the brain mask has {z.size} voxel(s) in the crop; the baseline needs at least 2")
        k = min(self.k, z.size // 2)  # both tails fit, however small the brain
        part = np.partition(z, (k - 1, z.size - k))
        return np.array([part[-k:].mean(), -part[:k].mean(), z.max(), -z.min()])

    def zmap(self, aligned: np.ndarray) -> np.ndarray:
        """(X, Y, Z) z-map of an aligned volume."""
        return self.deviation(aligned) / self.sd

    def features(self, volume: np.ndarray) -> np.ndarray:
        """(4,) features of one (X, Y, Z) volume (registered first, where the model registers)."""
        return self.features_of(self.zmap(self.align([volume])[0]))

    def predict(self, volumes, workers: int = 1) -> np.ndarray:
        """(N, K) class probabilities of (N, X, Y, Z) volumes; registration runs on ``workers`` processes."""
        feats = np.stack([self.features_of(self.zmap(v)) for v in self.align(volumes, workers)])
        return softmax(np.hstack([(feats - self.centre) / self.scale, np.ones((len(feats), 1))]) @ self.weights)


def fit_normative(volumes, targets, n_classes: int, normal: int, *, sigma_vox, k: int, l2: float = 1e-2,
                  highpass_vox=None, spacing=None, workers: int = 1) -> NormativeBaseline:
    """Fit the baseline on training volumes (N, X, Y, Z) with class indices ``targets``.

    Args:
        normal: the class index of normal subjects (their statistics are the norm).
        sigma_vox: smoothing in voxels (a float or one per axis).
        k: voxels averaged at each tail (about one lesion's volume).
        l2: ridge penalty of the logistic regression.
        highpass_vox: scale in voxels of the smooth deviation taken out (a float or one per axis); None: none.
        spacing: voxel size in mm. Given, every volume is registered (affine) onto the first normal subject;
            None: volumes are compared where they lie.
        workers: processes for the registrations.

    A class without training cases keeps a near-zero probability (the ridge holds its weights at 0
    while the others' logits grow).

    Raises:
        ValueError: fewer than two normal subjects.
    """
    targets = np.asarray(targets, dtype=int)
    which = np.flatnonzero(targets == normal)
    if len(which) < 2:
        raise ValueError(f"the normative baseline needs at least 2 normal training subjects, got {len(which)}")
    ndim = np.ndim(volumes[0])
    axes = (lambda s: None if s is None else tuple(float(x) for x in np.broadcast_to(s, (ndim,))))
    model = NormativeBaseline(np.zeros(0), np.zeros(0), np.zeros(0, bool), axes(sigma_vox), int(k), axes(highpass_vox),
                              template=None if spacing is None else np.asarray(volumes[which[0]], np.float32),
                              spacing=axes(spacing))
    aligned = np.stack(model.align(volumes, workers)).astype(np.float64)
    normals = aligned[which]
    n = len(normals)
    total = normals.sum(0)
    model.mean = total / n
    model.brain = ndimage.binary_erosion(ndimage.binary_fill_holes(foreground_mask(model.mean.astype(np.float32))))
    if not model.brain.any():
        model.brain = np.ones(model.mean.shape, bool)
    # Leave-one-out deviations of the normal subjects: scored against the norm they helped make, they would
    # look more normal than any unseen normal subject, both in the spread and in their own features.
    loo = np.stack([model.deviation(v, (total - v) / (n - 1)) for v in normals])
    power = (loo**2).sum(0)
    floor = 0.1 * float(np.sqrt(np.median(power[model.brain]) / n)) + 1e-6
    model.sd = np.maximum(np.sqrt(power / n), floor)
    feats = []
    for i, v in enumerate(aligned):
        if targets[i] == normal:
            j = int(np.searchsorted(which, i))
            sd_j = np.maximum(np.sqrt((power - loo[j] ** 2) / (n - 1)), floor)
            feats.append(model.features_of(loo[j] / sd_j))
        else:
            feats.append(model.features_of(model.zmap(v)))
    feats = np.stack(feats)
    model.centre, model.scale = feats.mean(0), feats.std(0) + 1e-9
    x = np.hstack([(feats - model.centre) / model.scale, np.ones((len(feats), 1))])
    model.weights = fit_softmax(x, targets, n_classes, l2)
    return model
