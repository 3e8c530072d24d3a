"""MR acquisition artefacts simulated in k-space: ghosting, motion and spikes (as TorchIO does).

Each works on the non-negative signal ``image - min`` per channel and returns
the magnitude image, so the background stays the background.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from medflow.data.augment.base import Params, Transform, register
from medflow.data.augment.spatial import Affine


def _kspace_apply(image, fn):
    out = []
    for c in image:
        lo = float(c.min())
        k = np.fft.fftshift(np.fft.fftn(c - lo))
        k = fn(k)
        out.append(np.abs(np.fft.ifftn(np.fft.ifftshift(k))) + lo)
    return np.stack(out).astype(np.float32)


@register
class Ghosting(Transform):
    """Ghosts along a phase-encoding axis: every n-th k-space plane is damped by ``intensity``."""

    name, kind = "ghosting", "intensity"

    class Params(Params):
        num_ghosts: tuple[int, int] = (2, 6)
        intensity: tuple[float, float] = Field(default=(0.3, 0.8))
        axes: list[int] | None = None

    def randomize(self, rng, shape):
        axes = self.params.axes if self.params.axes is not None else list(range(len(shape) - 1))
        return {"n": int(rng.integers(self.params.num_ghosts[0], self.params.num_ghosts[1] + 1)),
                "intensity": float(rng.uniform(*self.params.intensity)), "axis": int(axes[rng.integers(len(axes))])}

    def apply(self, image, label, draw):
        if draw["intensity"] == 0 or draw["n"] < 1:
            return image, label

        def ghost(k):
            idx = [slice(None)] * k.ndim
            idx[draw["axis"]] = slice(None, None, draw["n"])
            centre = k.shape[draw["axis"]] // 2
            keep = np.take(k, [centre], axis=draw["axis"]).copy()  # the DC plane carries the image itself
            k[tuple(idx)] *= 1.0 - draw["intensity"]
            cidx = [slice(None)] * k.ndim
            cidx[draw["axis"]] = slice(centre, centre + 1)
            k[tuple(cidx)] = keep
            return k

        return _kspace_apply(image, ghost), label


@register
class Motion(Transform):
    """Rigid motion during acquisition: k-space segments taken from slightly moved copies of the image."""

    name, kind = "motion", "intensity"

    class Params(Params):
        rotate_deg: float = Field(default=3.0, ge=0, le=30)
        translate: float = Field(default=0.02, ge=0, le=0.2, description="fraction of the size")
        num_transforms: int = Field(default=2, ge=1, le=8)

    def randomize(self, rng, shape):
        moves = [Affine(rotate_deg=self.params.rotate_deg, scale=(1.0, 1.0), translate=self.params.translate)
                 .randomize(rng, shape) for _ in range(self.params.num_transforms)]
        cuts = np.sort(rng.uniform(0.0, 1.0, self.params.num_transforms)).tolist()
        return {"moves": moves, "cuts": cuts, "axis": int(rng.integers(len(shape) - 1))}

    def apply(self, image, label, draw):
        if self.params.rotate_deg == 0 and self.params.translate == 0:
            return image, label
        affine = Affine(rotate_deg=self.params.rotate_deg, translate=self.params.translate)
        copies = [image] + [affine.apply(image, None, m)[0] for m in draw["moves"]]
        n = image.shape[1 + draw["axis"]]
        bounds = [0] + [int(round(c * n)) for c in draw["cuts"]] + [n]
        out = []
        for ch in range(image.shape[0]):
            lo = float(image[ch].min())
            ks = [np.fft.fftshift(np.fft.fftn(c[ch] - lo)) for c in copies]
            k = np.empty_like(ks[0])
            for i in range(len(ks)):  # segment i of k-space was acquired in position i
                idx = [slice(None)] * k.ndim
                idx[draw["axis"]] = slice(bounds[i], bounds[i + 1])
                k[tuple(idx)] = ks[i][tuple(idx)]
            out.append(np.abs(np.fft.ifftn(np.fft.ifftshift(k))) + lo)
        return np.stack(out).astype(np.float32), label


@register
class Spike(Transform):
    """Herringbone artefact: a few bright spikes in k-space."""

    name, kind = "kspace_spike", "intensity"

    class Params(Params):
        num_spikes: tuple[int, int] = (1, 3)
        intensity: tuple[float, float] = Field(default=(0.1, 0.5), description="relative to the peak of |k|")

    def randomize(self, rng, shape):
        n = int(rng.integers(self.params.num_spikes[0], self.params.num_spikes[1] + 1))
        spatial = shape[1:]
        # Spikes away from the centre: positions as fractions of each axis in [0.05, 0.45] off centre.
        offsets = rng.uniform(0.05, 0.45, (n, len(spatial))) * rng.choice([-1, 1], (n, len(spatial)))
        return {"offsets": offsets.tolist(), "intensity": float(rng.uniform(*self.params.intensity))}

    def apply(self, image, label, draw):
        if not draw["offsets"] or draw["intensity"] == 0:
            return image, label

        def spike(k):
            peak = float(np.abs(k).max())
            for off in draw["offsets"]:
                pos = tuple(int(s // 2 + o * s) % s for o, s in zip(off, k.shape))
                k[pos] += draw["intensity"] * peak
            return k

        return _kspace_apply(image, spike), label
