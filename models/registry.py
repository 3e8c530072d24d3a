"""Models by name: ``build_model("unet2d", params) -> keras.Model``.

Builders are plain functions registered with :func:`register_model`; a
pipeline config names one and passes its parameters. Everything a builder
makes is standard Keras layers (or registered serializable ones), so a
``.keras`` file loads with ``safe_mode=True``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

MODELS: dict[str, Callable] = {}

# Output names the tasks read from a model with several outputs (a one-output model's names are free).
LESION, PROBABILITIES = "lesion", "probabilities"


def register_model(name: str, task: str, consumes: str = "image"):
    """Register ``fn(input_shape, n_classes, **params) -> keras.Model`` under ``name`` for ``task``.

    ``consumes``: what the model reads; reconstruction models read an FBP "image" (the exported model
    puts the FBP layer in front) or the "sinogram" itself, and then take the geometry as a parameter.
    """
    def wrap(fn):
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        fn.task = task
        fn.consumes = consumes
        MODELS[name] = fn
        return fn
    return wrap


def _load_all() -> None:
    from medflow.models import classifiers, lpd, mil, reconstruction, segcls, unet  # noqa: F401  (registration)


def check_model(name: str, params: dict) -> Callable:
    """The builder for ``name``, after checking ``params`` against its signature (one-line errors)."""
    _load_all()
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    fn = MODELS[name]
    accepted = set(inspect.signature(fn).parameters) - {"input_shape", "n_classes"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"model {name!r} has no parameter(s) {unknown}; it takes {sorted(accepted)}")
    return fn


def build_model(name: str, input_shape: tuple[int, ...], n_classes: int, params: dict | None = None):
    """Build a registered model for inputs (*S, C) and ``n_classes`` outputs."""
    params = dict(params or {})
    return check_model(name, params)(input_shape=tuple(input_shape), n_classes=n_classes, **params)
