"""Classifier explanations: which method a network gets, maps on its crops, and maps on the input's grid.

Grad-CAM and HiResCAM need the Keras model (gradients) and a layer fine enough
for the lesion; occlusion needs only ``net(x)``, so it is the fallback for models without
such a layer (logistic, mlp) and for exported runtimes. ``evaluate`` and
``medflow predict --explain`` both go through :func:`explain_crops`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("auto", "hirescam", "gradcam", "occlusion")


@dataclass(frozen=True)
class ExplainSettings:
    """How to explain a classifier.

    Attributes:
        method: 'hirescam' (Grad-CAM with voxelwise gradient weights), 'gradcam' (the mean gradient
            per channel), 'occlusion', or 'auto' (HiResCAM where the Keras model has a layer at most
            ``max_voxel_mm`` per voxel, else occlusion). On the trained segcls, HiResCAM on the lesion
            map put 0.33 of its mass in the lesion (chance 0.0002); Grad-CAM put 0.0002.
        layer: the Grad-CAM layer by name (None: :func:`medflow.models.explain.pick_layer`).
        max_voxel_mm: the coarsest feature voxel that still shows the smallest lesion.
        occlusion_size: the occluding cube's edge in voxels (also its stride).
    """

    method: str = "auto"
    layer: str | None = None
    max_voxel_mm: float = 8.0
    occlusion_size: int = 8

    @classmethod
    def from_config(cls, ev) -> ExplainSettings:
        return cls(ev.explain, ev.explain_layer, ev.explain_max_voxel_mm, ev.occlusion_size)


def explain_crops(plan, net, crops: np.ndarray, settings: ExplainSettings,
                  classes: list[int] | None = None) -> tuple[np.ndarray, str, str | None]:
    """(maps (N, *P) in [0, 1], method used, Grad-CAM layer or None) for (N, *P, C) crops.

    ``classes``: the class explained per crop (default: the predicted one).

    Raises:
        ValueError: Grad-CAM asked for where it cannot run (no Keras model, no fine enough layer).
    """
    from medflow.models.explain import grad_cam, occlusion, pick_layer

    if settings.method not in METHODS:
        raise ValueError(f"explain method must be one of {METHODS}, got {settings.method!r}")
    model = getattr(net, "model", None)  # a Keras predictor carries its model; exported runtimes do not
    gradients = ("auto", "hirescam", "gradcam")
    if settings.method in gradients and model is not None:
        layer = settings.layer or pick_layer(model, plan.preprocess.spacing, settings.max_voxel_mm, crops.shape[1:-1])
        if settings.layer is not None and settings.layer not in {lyr.name for lyr in model.layers}:
            raise ValueError(f"explain layer {settings.layer!r} is not a layer of {model.name}")
        if layer is not None:
            name = "gradcam" if settings.method == "gradcam" else "hirescam"
            try:
                return grad_cam(model, crops, layer, classes, elementwise=name == "hirescam"), name, layer
            except ValueError:
                if settings.method != "auto":
                    raise
        elif settings.method != "auto":
            raise ValueError(f"{settings.method}: no layer of {model.name} has voxels of at most "
                             f"{settings.max_voxel_mm} mm; use occlusion")
    elif settings.method in ("hirescam", "gradcam"):
        raise ValueError("Grad-CAM needs the Keras runtime (exported runtimes have no gradients); use occlusion")
    size = max(1, min(settings.occlusion_size, *crops.shape[1:-1]))
    return occlusion(net, crops, size=size, batch=plan.inference.batch_size, classes=classes), "occlusion", None


def to_input_grid(maps: np.ndarray, centres: list[list[int]], shape: tuple[int, ...], meta: dict, plan) -> np.ndarray:
    """(X, Y, Z) float32 on the native grid of the input, from (N, *P) maps on its crops.

    Each crop's map goes back onto the preprocessed grid (the mean where crops overlap, 0
    outside every crop), then through the inverse of preprocessing (interpolation, un-crop,
    orientation) to the input's grid.
    """
    from medflow.data.native import to_native
    from medflow.data.sampling import paste_sample

    sampler = plan.window.sampler()
    total, count = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for m, c in zip(maps, centres):
        total += paste_sample(np.asarray(m, np.float32), shape, c, sampler)
        count += paste_sample(np.ones_like(m, np.float32), shape, c, sampler)
    grid = np.where(count > 0, total / np.maximum(count, 1.0), 0.0)
    # to_native maps class probabilities, with the background class 1 outside; [1 - m, m] gives 0 there.
    return to_native(np.stack([1.0 - grid, grid], axis=-1), meta)[..., 1].astype(np.float32)
