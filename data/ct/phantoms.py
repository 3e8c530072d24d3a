"""Random ellipse phantoms following DIVal's "ellipses" dataset.

Recipe (Leuschner et al., DIVal ``EllipsesDataset``; Baguer, Leuschner & Schmidt,
Inverse Problems 36 (2020) 094004): 70 candidate ellipses with value U(-0.4, 1.0),
half-axes 0.2 * Exp(1), centres U(-0.9, 0.9) and rotation U(0, 2 pi) on the square
[-1, 1]^2; the first min(Poisson(40), 70) of them are kept. Values add where
ellipses overlap. The non-zero part is then shifted by the image minimum (so the
minimum becomes 0 when it is negative) and the image is divided by its maximum.

The draw (:func:`draw_ellipses`) is kept apart from the rendering
(:func:`render_ellipses`), so the same object can be rendered on the
reconstruction grid (ground truth) and on a finer grid (for measurements that
avoid the inverse crime), and normalized by the same constants on both.

Array convention: axis 0 is x, axis 1 is y, pixel i's centre at
-1 + (i + 0.5) * 2 / size, as in ODL's ``uniform_discr([-1, -1], [1, 1], shape)``.
"""

from __future__ import annotations

import numpy as np

MAX_ELLIPSES = 70
MEAN_ELLIPSES = 40
SPLIT_INDEX = {"train": 0, "validation": 1, "test": 2}


def draw_ellipses(rng: np.random.Generator) -> np.ndarray:
    """Draw one phantom's ellipses in DIVal's order.

    Returns:
        (n, 6) float64 rows of (value, half_axis_1, half_axis_2, centre_x, centre_y,
        rotation_rad), n = min(Poisson(40), 70); n may be 0.
    """
    value = rng.uniform(-0.4, 1.0, MAX_ELLIPSES)
    a1 = 0.2 * rng.exponential(1.0, MAX_ELLIPSES)
    a2 = 0.2 * rng.exponential(1.0, MAX_ELLIPSES)
    x = rng.uniform(-0.9, 0.9, MAX_ELLIPSES)
    y = rng.uniform(-0.9, 0.9, MAX_ELLIPSES)
    rot = rng.uniform(0.0, 2.0 * np.pi, MAX_ELLIPSES)
    n = min(int(rng.poisson(MEAN_ELLIPSES)), MAX_ELLIPSES)
    return np.stack([value, a1, a2, x, y, rot], axis=1)[:n]


def pixel_centres(size: int) -> np.ndarray:
    """(size,) pixel-centre coordinates on [-1, 1]."""
    return -1.0 + (np.arange(size) + 0.5) * (2.0 / size)


def render_ellipses(ellipses: np.ndarray, size: int) -> np.ndarray:
    """Sum of the ellipses' indicator functions at the pixel centres of a size x size grid.

    Args:
        ellipses: (n, 6) rows as returned by :func:`draw_ellipses`.
        size: pixels per side.

    Returns:
        (size, size) float64 image, axis 0 = x, unnormalized.
    """
    c = pixel_centres(size)
    image = np.zeros((size, size))
    step = 2.0 / size
    for value, a1, a2, cx, cy, rot in ellipses:
        if value == 0.0 or a1 <= 0.0 or a2 <= 0.0:
            continue
        # Only the bounding box of the ellipse is evaluated: most ellipses are small.
        r = max(a1, a2)
        ix = np.flatnonzero(np.abs(c - cx) <= r + step)
        iy = np.flatnonzero(np.abs(c - cy) <= r + step)
        if ix.size == 0 or iy.size == 0:
            continue
        dx = c[ix, None] - cx
        dy = c[None, iy] - cy
        cos, sin = np.cos(rot), np.sin(rot)
        u = cos * dx + sin * dy
        v = -sin * dx + cos * dy
        inside = (u / a1) ** 2 + (v / a2) ** 2 <= 1.0
        image[ix[0]:ix[-1] + 1, iy[0]:iy[-1] + 1] += value * inside
    return image


def normalization(image: np.ndarray) -> tuple[float, float]:
    """DIVal's constants for ``image``: (shift, scale), applied as (x - shift) / scale on non-zeros.

    ``shift`` is the image minimum (0 or negative for ellipse sums); ``scale`` is the
    maximum after the shift (1 for an empty image, which stays all zero).
    """
    shift = float(min(image.min(), 0.0))
    top = float(normalize(image, shift, 1.0).max())
    return shift, top if top > 0 else 1.0


def normalize(image: np.ndarray, shift: float, scale: float) -> np.ndarray:
    """Apply :func:`normalization`'s constants; zero pixels stay zero (pointwise, any grid)."""
    return np.where(image != 0, image - shift, 0.0) / scale


def phantom(ellipses: np.ndarray, size: int = 128, oversample: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """The normalized phantom on the size grid and, optionally, the same object on a finer grid.

    Args:
        ellipses: (n, 6) from :func:`draw_ellipses`.
        size: ground-truth grid (DIVal: 128).
        oversample: fine grid factor; 1 returns no fine image.

    Returns:
        (ground truth (size, size) float32 in [0, 1],
         fine (size * oversample,) * 2 float64 normalized with the ground truth's constants, or None).
    """
    coarse = render_ellipses(ellipses, size)
    shift, scale = normalization(coarse)
    fine = None
    if oversample > 1:
        fine = normalize(render_ellipses(ellipses, size * oversample), shift, scale)
    return normalize(coarse, shift, scale).astype(np.float32), fine


def phantom_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """Per-image seed: fixed per (seed, split, index), independent of the worker count."""
    return np.random.SeedSequence([seed, SPLIT_INDEX[split], index])
