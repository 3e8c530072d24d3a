"""Transform contract, registry and seeded chain.

A transform separates its random draw from its application (MONAI's
``randomize``/``__call__`` split): :meth:`Transform.randomize` turns a numpy
Generator into plain parameters and :meth:`Transform.apply` is a pure array
function of (image, label, draw). Every sample's seed derives from
(run seed, epoch, case id, draw index), and each transform of the chain gets
its own child generator, so any sample can be replayed exactly and adding a
transform at the end never changes what the earlier ones drew.

Arrays: image (C, *S) float32, label (*S) integer or None, with S = (H, W)
in 2D and (D, H, W) in 3D.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

REGISTRY: dict[str, type["Transform"]] = {}


class Params(BaseModel):
    """Base of every transform's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _ranges_ordered(self):
        for key, value in self:
            if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
                if value[0] > value[1]:
                    raise ValueError(f"{key}: range needs lo <= hi, got {list(value)}")
        return self


def register(cls: type["Transform"]) -> type["Transform"]:
    if cls.name in REGISTRY:
        raise ValueError(f"transform {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


class Transform:
    """Base class. Subclasses set ``name``, ``kind``, ``dims``, ``Params`` and implement the two halves."""

    name: ClassVar[str]
    # 'spatial' moves label and image together; 'intensity' leaves the label alone; 'lesion' adds to both
    kind: ClassVar[str]
    dims: ClassVar[tuple[int, ...]] = (2, 3)
    uses_target: ClassVar[bool] = False  # randomize also takes the sample's class index (``target``)
    Params: ClassVar[type[Params]] = Params

    def __init__(self, p: float = 1.0, **params: Any):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability must be in [0, 1]. Received: p={p}")
        self.p = float(p)
        self.params = self.Params(**params)

    def randomize(self, rng: np.random.Generator, shape: tuple[int, ...]) -> dict:
        """Draw this sample's parameters. ``shape`` is the image's (C, *S)."""
        return {}

    def apply(self, image: np.ndarray, label: np.ndarray | None, draw: dict):
        """Apply the drawn parameters; returns (image, label). Must not touch any RNG."""
        raise NotImplementedError

    def bind_classes(self, names: list[str] | None) -> None:
        """Resolve class names in the parameters against the dataset's classes (index order)."""

    def draw(self, rng: np.random.Generator, shape: tuple[int, ...], target: int | None = None) -> dict:
        """:meth:`randomize`, given the sample's class where the transform uses it."""
        return self.randomize(rng, shape, target) if self.uses_target else self.randomize(rng, shape)

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        """Dict wrapper over {'image', 'label', 'target', ...}: draw, then apply."""
        out = dict(data)
        draw = self.draw(rng, data["image"].shape, data.get("target"))
        out["image"], out["label"] = self.apply(data["image"], data.get("label"), draw)
        return out

    def __repr__(self) -> str:
        return f"{self.name}(p={self.p}, {self.params.model_dump()})"


def build_transform(spec: dict, ndim: int, classes: list[str] | None = None) -> Transform:
    """Instantiate ``{'name': ..., 'p': ..., **params}`` for ``ndim``-D samples of a dataset whose
    class names are ``classes`` ([]: a dataset without classes; None: not known yet).

    Raises:
        ValueError: unknown name, wrong dimensionality or invalid parameters (one line).
    """
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in REGISTRY:
        raise ValueError(f"unknown transform {name!r}; known: {sorted(REGISTRY)}")
    cls = REGISTRY[name]
    if ndim not in cls.dims:
        raise ValueError(f"transform {name!r} works on {' or '.join(f'{d}D' for d in cls.dims)} samples, not {ndim}D")
    try:
        transform = cls(**spec)
    except ValidationError as err:
        def one(e) -> str:
            where = ".".join(map(str, e["loc"]))
            msg = "unknown parameter" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
            return f"{where}: {msg}" if where else msg

        problems = "; ".join(one(e) for e in err.errors())
        raise ValueError(f"{name}: {problems}") from None
    transform.bind_classes(classes)
    return transform


def sample_seed(run_seed: int, epoch: int, case_id: str, index: int) -> int:
    """Stable 63-bit seed of one training sample (independent of order, workers and platform)."""
    h = hashlib.blake2b(f"{run_seed}\0{epoch}\0{case_id}\0{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


class Chain:
    """Transforms applied in order, each with probability ``p``, each with its own seeded generator."""

    def __init__(self, transforms: list[Transform]):
        self.transforms = list(transforms)

    @classmethod
    def from_config(cls, specs: list[dict], ndim: int, classes: list[str] | None = None) -> "Chain":
        return cls([build_transform(s, ndim, classes) for s in specs])

    def __call__(self, image: np.ndarray, label: np.ndarray | None, seed: int, target: int | None = None):
        """Augment one sample of class index ``target`` (None: no class).

        Returns (image, label, applied) where ``applied`` lists (name, draw).
        """
        applied = []
        for i, t in enumerate(self.transforms):
            rng = np.random.default_rng([seed, 1 + i])  # stream 0 belongs to the sampler
            if rng.random() >= t.p:
                continue
            draw = t.draw(rng, image.shape, target)
            image, label = t.apply(image, label, draw)
            applied.append((t.name, draw))
        return np.ascontiguousarray(image, dtype=np.float32), label, applied
