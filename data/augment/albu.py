"""albumentations 2.0.8 transforms behind the medflow transform contract.

albumentations serves 2D slices well (OpenCV warps, nearest-neighbour masks)
and has 3D dropout. medflow keeps the decision to apply (``p``) and the seed:
albumentations gets p=1 and a seed drawn from the sample's generator, so
replays are exact. Its intensity transforms that assume a [0, 1] range (gamma)
or break on volumes (brightness/contrast, noise given only ``volume=``) are
replaced by medflow's own n-D transforms.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations 2.0.8 checks PyPI at import

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
from pydantic import ConfigDict  # noqa: E402

from data.augment.base import Params, Transform, register  # noqa: E402


class _AnyParams(Params):
    """Parameters are validated by albumentations itself when the transform is built."""

    model_config = ConfigDict(extra="allow", frozen=True)


class AlbuTransform(Transform):
    op_class: type = None

    Params = _AnyParams

    def __init__(self, p: float = 1.0, **params):
        super().__init__(p=p, **params)
        try:
            self.op = self.op_class(**params, p=1.0)
        except Exception as err:  # albumentations raises pydantic errors and TypeErrors
            raise ValueError(" ".join(str(err).split())[:400]) from None

    def randomize(self, rng, shape):
        return {"seed": int(rng.integers(2**31))}

    def apply(self, image, label, draw):
        self.op.set_random_seed(draw["seed"])
        # albumentations fills with 0: shift each channel so its minimum (the background) is 0.
        low = image.reshape(image.shape[0], -1).min(axis=1).reshape((-1,) + (1,) * (image.ndim - 1))
        moved = np.moveaxis(image - low, 0, -1)  # (C, *S) -> (*S, C)
        key, mask_key = ("image", "mask") if image.ndim == 3 else ("volume", "mask3d")
        kw = {key: np.ascontiguousarray(moved)}
        if label is not None:
            kw[mask_key] = label
        out = self.op(**kw)
        result = np.moveaxis(out[key], -1, 0) + low
        return np.ascontiguousarray(result, dtype=np.float32), out.get(mask_key, label)


def _albu(name: str, op_class, kind: str, dims: tuple[int, ...]):
    cls = type(f"Albu_{name}", (AlbuTransform,), {"name": name, "kind": kind, "dims": dims, "op_class": op_class,
                                                    "__doc__": f"albumentations.{op_class.__name__}"})
    return register(cls)


for _name, _op, _kind, _dims in (
    ("hflip", A.HorizontalFlip, "spatial", (2,)),
    ("vflip", A.VerticalFlip, "spatial", (2,)),
    ("affine2d", A.Affine, "spatial", (2,)),
    ("elastic2d", A.ElasticTransform, "spatial", (2,)),
    ("grid_distortion", A.GridDistortion, "spatial", (2,)),
    ("brightness_contrast", A.RandomBrightnessContrast, "intensity", (2,)),
    ("gauss_noise", A.GaussNoise, "intensity", (2,)),
    ("coarse_dropout", A.CoarseDropout, "intensity", (2,)),
    ("coarse_dropout3d", A.CoarseDropout3D, "intensity", (3,)),
):
    _albu(_name, _op, _kind, _dims)
