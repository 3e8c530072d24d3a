"""Synthetic lesion insertion: more lesions to learn from than the cohort has.

A lesion detector trained on a few dozen lesion cases learns those lesions' places
and backgrounds and misses new ones (the classification demo: lesion Dice 0.64 on
its training cases, 0.33 on validation). Inserting simulated lesions at random
places of the training samples, with the mask marked, is the standard remedy in
lesion segmentation (lesion simulation for MS and stroke: Salem et al. 2019,
Zhang et al.'s CarveMix 2021; SynthSeg's spirit for shapes). Here a lesion is an
ellipsoid with a soft edge that multiplies the signal by ``1 + c * soft``: the
simplest model that is bright or dark, sized, oriented and blended like a focal
lesion. Its ranges come from the config, so they can follow a study's own masks.

The lesion goes only where it can be marked (a sample with a mask) and, with
``classes``, only into cases of a lesion class, with that class's contrast sign:
the sample's class and its mask stay true.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field, model_validator
from medflow.data.augment.base import Params, Transform, register
from medflow.data.augment.intensity import per_channel
from medflow.data.sample.synth import soft_ellipsoid


def lesion_profile(shape: tuple[int, ...], centre, semi_axes, rotation, edge: float) -> np.ndarray:
    """The sample generator's soft ellipsoid (*S) on a voxel grid of ``shape``, centred at voxel ``centre``,
    with ``semi_axes`` and ``edge`` in voxels (see :func:`medflow.data.sample.synth.soft_ellipsoid`)."""
    n = len(shape)
    offsets = np.indices(shape, dtype=np.float32) - np.asarray(centre, dtype=np.float32).reshape((n,) + (1,) * n)
    return soft_ellipsoid(offsets, semi_axes, rotation, edge)


@register
class LesionSynth(Transform):
    """Insert one simulated focal lesion and mark it in the mask (label ``label_value``).

    Relative contrast ``c``: the signal above the channel's minimum is multiplied by ``1 + c``
    inside (z-scored MR can be negative; the background stays the background). The centre, and
    every voxel marked, is above ``floor`` of the first channel's range: tissue, not air.
    """

    name, kind = "lesion_synth", "lesion"
    uses_target: ClassVar[bool] = True

    class Params(Params):
        contrast: tuple[float, float] = Field(default=(0.2, 0.5), description="relative contrast c, every sample")
        classes: dict[str, tuple[float, float]] | None = Field(
            default=None, description="class -> contrast range; other classes get no lesion")
        semi_axes: tuple[float, float] = Field(default=(1.5, 3.5), description="voxels, each axis drawn")
        edge: float = Field(default=0.5, gt=0, description="edge sd, voxels")
        floor: float = Field(default=0.25, ge=0, lt=1, description="centres above this fraction of the range")
        label_value: int = Field(default=1, ge=1, le=254)

        @model_validator(mode="after")
        def _positive_axes_and_ordered_classes(self):
            if self.semi_axes[0] <= 0:
                raise ValueError(f"semi_axes: voxels > 0, got {list(self.semi_axes)}")
            for name, (lo, hi) in (self.classes or {}).items():
                if lo > hi:
                    raise ValueError(f"classes.{name}: range needs lo <= hi, got {[lo, hi]}")
            return self

    def __init__(self, p: float = 1.0, **params):
        super().__init__(p, **params)
        self.ranges: list[tuple[float, float] | None] | None = None  # per class index, once bound

    def bind_classes(self, names: list[str] | None) -> None:
        """Resolve ``classes`` against the dataset's class names (index order; None: not known yet,
        [] : the dataset has no classes)."""
        wanted = self.params.classes
        if wanted is None or names is None:
            return
        if not names:
            raise ValueError("lesion_synth: classes needs a classification dataset (dataset.classes)")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise ValueError(f"lesion_synth: classes {unknown} are not in dataset.classes {list(names)}")
        self.ranges = [wanted.get(name) for name in names]

    def contrast_range(self, target: int | None) -> tuple[float, float] | None:
        if self.params.classes is None:
            return self.params.contrast
        if target is None or self.ranges is None:
            return None
        return self.ranges[int(target)]

    def randomize(self, rng, shape, target: int | None = None):
        span = self.contrast_range(target)
        if span is None:
            return {"contrast": 0.0}
        n = len(shape) - 1
        q, r = np.linalg.qr(rng.standard_normal((n, n)))
        rotation = q * np.sign(np.diag(r))  # Haar-uniform orthonormal axes
        return {"contrast": float(rng.uniform(*span)),
                "semi_axes": [float(a) for a in rng.uniform(*self.params.semi_axes, n)],
                "rotation": rotation.tolist(), "centre_draw": float(rng.random())}

    def apply(self, image, label, draw):
        c = draw["contrast"]
        if c == 0 or label is None:  # unmarked, a lesion would teach that lesions are background
            return image, label
        first = image[0]
        lo = float(first.min())
        tissue = first > lo + self.params.floor * (float(first.max()) - lo)
        candidates = np.flatnonzero(tissue)
        if candidates.size == 0:
            return image, label
        flat = candidates[min(int(draw["centre_draw"] * candidates.size), candidates.size - 1)]
        centre = np.unravel_index(flat, first.shape)
        soft = lesion_profile(first.shape, centre, draw["semi_axes"], draw["rotation"], self.params.edge)
        gain = 1.0 + c * soft
        out = per_channel(image, lambda ch, lo: (ch - lo) * gain + lo)  # as bias_field multiplies
        lab = np.array(label, copy=True)
        lab[(soft > 0.5) & tissue] = self.params.label_value  # air under the ellipsoid did not change: unmarked
        return out, lab
