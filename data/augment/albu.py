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
import threading

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations 2.0.8 checks PyPI at import

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
from pydantic import ConfigDict  # noqa: E402

from medflow.data.augment.base import Params, Transform, register  # noqa: E402


class _AnyParams(Params):
    """Parameters are validated by albumentations itself when the transform is built."""

    model_config = ConfigDict(extra="allow", frozen=True)


class AlbuTransform(Transform):
    op_class: type = None

    Params = _AnyParams

    def __init__(self, p: float = 1.0, **params):
        super().__init__(p=p, **params)
        self._params = params
        self._local = threading.local()  # tf.data maps in parallel threads; an op's seed is its state
        try:
            self._local.op = self.op_class(**params, p=1.0)
        except (TypeError, ValueError) as err:  # albumentations re-raises its pydantic errors as ValueError
            raise ValueError(f"{self.name}: {_first_problem(str(err))}") from None

    def randomize(self, rng, shape):
        return {"seed": int(rng.integers(2**31))}

    @property
    def op(self):
        if not hasattr(self._local, "op"):
            self._local.op = self.op_class(**self._params, p=1.0)
        return self._local.op

    def apply(self, image, label, draw):
        op = self.op
        op.set_random_seed(draw["seed"])
        # albumentations expects float images in [0, 1] (it clips to it) and fills with 0: map each
        # channel's [min, max] to [0, 1], so the background is 0, and map back afterwards.
        flat = image.reshape(image.shape[0], -1)
        shape = (-1,) + (1,) * (image.ndim - 1)
        low, span = flat.min(axis=1).reshape(shape), np.maximum(np.ptp(flat, axis=1), 1e-8).reshape(shape)
        moved = np.moveaxis((image - low) / span, 0, -1)  # (C, *S) -> (*S, C)
        key, mask_key = ("image", "mask") if image.ndim == 3 else ("volume", "mask3d")
        kw = {key: np.ascontiguousarray(moved)}
        if label is not None:
            kw[mask_key] = label
        out = op(**kw)
        result = np.moveaxis(out[key], -1, 0) * span + low
        return np.ascontiguousarray(result, dtype=np.float32), out.get(mask_key, label)


def _first_problem(text: str) -> str:
    """One line from a pydantic error report: ``key: message``."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) >= 3 and "validation error" in lines[0]:
        key = lines[1].split(".")[0]
        return f"{key}: {lines[2].split(' [type=')[0]}"
    return " ".join(text.split())[:300]


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
