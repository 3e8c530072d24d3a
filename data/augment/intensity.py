"""Our own n-D intensity transforms: gamma, MR bias field, Rician noise, CT low-dose noise.

Inputs are already normalized (z-scored MR can be negative), so transforms
that model a physical, non-negative signal work on ``image - min`` per channel
and add the minimum back: the background stays the background. The label is
never touched.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field
from scipy import ndimage

from medflow.data.augment.base import Params, Transform, register


def per_channel(image, fn):
    return np.stack([fn(c, float(c.min())) for c in image]).astype(np.float32)


def smooth_field(noise: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
    """Upsample a coarse (*K) noise array linearly to ``spatial``, corner to corner, scaled to max |v| = 1."""
    zoom = [(k - 1) / max(s - 1, 1) for k, s in zip(noise.shape, spatial)]
    field = ndimage.affine_transform(noise.astype(np.float32), zoom, output_shape=spatial, order=1, mode="nearest")
    return field / max(float(np.abs(field).max()), 1e-8)


@register
class Gamma(Transform):
    """Contrast change ``x' = x^g`` on the channel's [min, max] range, g log-uniform in ``gamma``."""

    name, kind = "gamma", "intensity"

    class Params(Params):
        gamma: tuple[float, float] = (0.7, 1.5)

    def randomize(self, rng, shape):
        lo, hi = self.params.gamma
        return {"gamma": float(np.exp(rng.uniform(np.log(lo), np.log(hi))))}

    def apply(self, image, label, draw):
        g = draw["gamma"]
        if g == 1.0:
            return image, label

        def one(c, lo):
            span = max(float(c.max()) - lo, 1e-8)
            return np.power((c - lo) / span, g) * span + lo

        return per_channel(image, one), label


@register
class BiasField(Transform):
    """Smooth multiplicative MR bias field with max deviation ``strength`` (0.3 = +-30 %)."""

    name, kind = "bias_field", "intensity"

    class Params(Params):
        strength: float = Field(default=0.3, ge=0, lt=1)
        coarse: int = Field(default=4, ge=2, description="control points per axis")

    def randomize(self, rng, shape):
        nd = len(shape) - 1
        return {"noise": rng.standard_normal((self.params.coarse,) * nd).tolist()}

    def apply(self, image, label, draw):
        if self.params.strength == 0:
            return image, label
        bias = 1.0 + self.params.strength * smooth_field(np.asarray(draw["noise"]), image.shape[1:])
        return per_channel(image, lambda c, lo: (c - lo) * bias + lo), label


@register
class RicianNoise(Transform):
    """MR magnitude noise: |signal + n1 + i n2|, sigma a fraction of the channel's range."""

    name, kind = "rician_noise", "intensity"

    class Params(Params):
        sigma: tuple[float, float] = Field(default=(0.0, 0.05), description="fraction of (max - min)")

    def randomize(self, rng, shape):
        frac = rng.uniform(*self.params.sigma)
        return {"frac": float(frac), "seed": int(rng.integers(2**63))}

    def apply(self, image, label, draw):
        if draw["frac"] == 0:
            return image, label
        rng = np.random.default_rng(draw["seed"])  # the noise itself is part of the draw

        def one(c, lo):
            sigma = draw["frac"] * max(float(c.max()) - lo, 1e-8)
            n = rng.standard_normal((2, *c.shape), dtype=np.float32) * sigma
            return np.sqrt((c - lo + n[0]) ** 2 + n[1] ** 2) + lo

        return per_channel(image, one), label


@register
class CTLowDoseNoise(Transform):
    """CT at a lower simulated dose: extra correlated noise so sigma grows as 1/sqrt(dose).

    Image-domain model: quantum noise at full dose has sd ``base_sigma`` (in
    normalized units; 0.005 = 10 HU in a 2000 HU window); at dose fraction d it
    has sd base_sigma / sqrt(d), so noise of sd base_sigma * sqrt(1/d - 1) is
    added, smoothed over ``correlation`` voxels as the FBP kernel does.
    """

    name, kind = "ct_lowdose_noise", "intensity"

    class Params(Params):
        dose: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (0.25, 1.0)
        base_sigma: float = Field(default=0.005, ge=0)
        correlation: float = Field(default=0.7, ge=0, description="Gaussian smoothing of the noise, voxels")

    def randomize(self, rng, shape):
        lo, hi = self.params.dose
        return {"dose": float(rng.uniform(lo, hi)), "seed": int(rng.integers(2**63))}

    def apply(self, image, label, draw):
        extra = self.params.base_sigma * np.sqrt(1.0 / draw["dose"] - 1.0)
        if extra == 0:
            return image, label
        rng = np.random.default_rng(draw["seed"])
        noise = rng.standard_normal(image.shape, dtype=np.float32)
        if self.params.correlation > 0:
            sig = (0,) + (self.params.correlation,) * (image.ndim - 1)
            noise = ndimage.gaussian_filter(noise, sig)
            noise /= max(float(noise.std()), 1e-8)
        return (image + extra * noise).astype(np.float32), label
