"""Our own n-D spatial transforms (2D and 3D): flip, affine, elastic.

Image channels are interpolated linearly; the label moves with nearest
neighbour, so it keeps its set of classes. Points outside the field of view
take the image's minimum (background) and label 0.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy import ndimage
from scipy.spatial.transform import Rotation

from medflow.data.augment.base import Params, Transform, register


def _resample(image, label, coords_or_matrix, offset=None):
    """Sample every channel (linear) and the label (nearest) at mapped coordinates."""
    def one(arr, order, cval):
        if offset is not None:
            return ndimage.affine_transform(arr, coords_or_matrix, offset=offset, order=order, mode="constant",
                                            cval=cval, prefilter=False)
        return ndimage.map_coordinates(arr, coords_or_matrix, order=order, mode="constant", cval=cval,
                                       prefilter=False)

    out = np.stack([one(c, 1, float(c.min())) for c in image]).astype(np.float32)
    lab = one(label, 0, 0) if label is not None else None
    return out, lab


@register
class Flip(Transform):
    """Mirror along each listed spatial axis with probability 0.5 per axis."""

    name, kind = "flip", "spatial"

    class Params(Params):
        axes: list[int] | None = Field(default=None, description="spatial axes (default: all)")

    def randomize(self, rng, shape):
        axes = self.params.axes if self.params.axes is not None else list(range(len(shape) - 1))
        return {"axes": [a for a in axes if rng.random() < 0.5]}

    def apply(self, image, label, draw):
        for a in draw["axes"]:
            image = np.flip(image, axis=a + 1)
            label = np.flip(label, axis=a) if label is not None else None
        return image, label


@register
class Affine(Transform):
    """Random rotation, scaling and translation about the centre (2D or 3D)."""

    name, kind = "affine", "spatial"

    class Params(Params):
        rotate_deg: float = Field(default=15.0, ge=0, le=180, description="max |angle| per rotation axis")
        scale: tuple[float, float] = (0.9, 1.1)
        translate: float = Field(default=0.0, ge=0, le=0.5, description="max shift, fraction of the size")
        isotropic: bool = True

    def randomize(self, rng, shape):
        nd = len(shape) - 1
        p = self.params
        angles = rng.uniform(-p.rotate_deg, p.rotate_deg, 1 if nd == 2 else 3)
        scale = rng.uniform(*p.scale, 1 if p.isotropic else nd)
        shift = rng.uniform(-p.translate, p.translate, nd) * np.array(shape[1:])
        return {"angles": angles.tolist(), "scale": np.broadcast_to(scale, nd).tolist(), "shift": shift.tolist()}

    def apply(self, image, label, draw):
        nd = image.ndim - 1
        if nd == 2:
            a = np.deg2rad(draw["angles"][0])
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        else:
            rot = Rotation.from_euler("xyz", draw["angles"], degrees=True).as_matrix()
        forward = rot @ np.diag(draw["scale"])
        inverse = np.linalg.inv(forward)  # output voxel -> input voxel
        centre = (np.array(image.shape[1:]) - 1) / 2.0
        offset = centre - inverse @ (centre + np.asarray(draw["shift"]))
        if np.allclose(inverse, np.eye(nd)) and np.allclose(offset, 0):
            return image, label
        return _resample(image, label, inverse, offset)


@register
class Elastic(Transform):
    """Smooth random displacement field (2D or 3D), drawn on a coarse grid and interpolated."""

    name, kind = "elastic", "spatial"

    class Params(Params):
        magnitude: float = Field(default=4.0, ge=0, description="max displacement in voxels")
        sigma: float = Field(default=2.0, gt=0, description="smoothing of the coarse field, in coarse cells")
        grid: int = Field(default=8, ge=2, description="coarse cell size in voxels")

    def randomize(self, rng, shape):
        spatial = shape[1:]
        coarse = tuple(int(np.ceil(s / self.params.grid)) + 1 for s in spatial)
        return {"noise": rng.standard_normal((len(spatial), *coarse)).astype(np.float32)}

    def apply(self, image, label, draw):
        if self.params.magnitude == 0:
            return image, label
        spatial = image.shape[1:]
        field = np.stack([ndimage.gaussian_filter(n, self.params.sigma, mode="reflect") for n in draw["noise"]])
        field *= self.params.magnitude / max(float(np.sqrt((field**2).sum(0)).max()), 1e-8)
        zoom = 1.0 / self.params.grid
        dense = [ndimage.affine_transform(f, np.full(len(spatial), zoom), output_shape=spatial, order=1,
                                          mode="nearest") for f in field]
        grid = np.indices(spatial, dtype=np.float32)
        coords = grid + np.stack(dense)
        return _resample(image, label, coords)
