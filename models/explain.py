"""Where a classifier looks: 3D Grad-CAM, occlusion sensitivity, and how much of it falls in the lesion.

Grad-CAM (Selvaraju et al. 2017) weights a layer's channels by the mean
gradient of the class score and keeps the positive part; in 3D it needs a layer
fine enough to resolve the lesion, so :func:`pick_layer` takes the deepest feature
layer whose voxel is at most ``max_voxel_mm`` (a map at 24 mm cannot show an 8 mm
lesion). Occlusion sensitivity (Zeiler & Fergus 2014) needs only ``net(x) -> p``,
so it serves models without a usable conv layer and exported runtimes.

Maps are (*S) float32 on the model's input grid, scaled to [0, 1].
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from medflow.models.registry import PROBABILITIES


def feature_layers(model) -> list[str]:
    """Names of the layers with a feature map on the input's grid or a coarser one, (B, *S', F), in the
    model's order; identities (segcls's StopGradient) are left out, their input is the same map.

    A one-channel map counts: segcls's class head reads only its lesion map (and a global average), so
    the lesion map is the layer whose Grad-CAM says where the decision came from. Grad-CAM on the
    decoder before it weighs each channel by its mean gradient and lights up wherever a channel is
    active, which for segcls is the whole brain (measured: 0.000 of the map inside the lesion).
    """
    import keras

    from medflow.models.segcls import StopGradient

    rank = len(model.inputs[0].shape)
    return [layer.name for layer in model.layers if not isinstance(layer, (keras.layers.InputLayer, StopGradient))
            and isinstance(layer.output, keras.KerasTensor) and len(layer.output.shape) == rank]


def layer_shapes(model, names: list[str], spatial=None) -> dict[str, tuple]:
    """name -> the layer's spatial output shape for an input of ``spatial`` size (default: the model's own;
    needed for a model built for any size, whose layers have no static shape)."""
    import keras

    shape = tuple(model.inputs[0].shape[1:-1]) if spatial is None else tuple(int(s) for s in spatial)
    if any(s is None for s in shape):
        raise ValueError(f"{model.name} takes any input size: give the input's spatial shape")
    sub = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    specs = sub.compute_output_spec(keras.KerasTensor((1, *shape, model.inputs[0].shape[-1])))
    return {n: tuple(spec.shape[1:-1]) for n, spec in zip(names, specs)}


def pick_layer(model, spacing_mm, max_voxel_mm: float = 8.0, spatial=None) -> str | None:
    """The deepest feature layer (:func:`feature_layers`) whose voxel is at most ``max_voxel_mm``
    on every axis, or None when none is.

    Args:
        spacing_mm: the input's voxel size per spatial axis.
        spatial: the input's spatial shape (default: the model's; required when that is unknown).
    """
    names = feature_layers(model)
    if not names:
        return None
    shapes = layer_shapes(model, names, spatial)
    size = np.array(spatial if spatial is not None else model.inputs[0].shape[1:-1], dtype=float)
    best = None
    for name in names:
        voxel = size / np.array(shapes[name], dtype=float) * np.asarray(spacing_mm, dtype=float)
        if np.all(voxel <= max_voxel_mm + 1e-6):
            best = name
    return best


def grad_cam(model, x: np.ndarray, layer: str, classes: list[int] | None = None, *,
             elementwise: bool = False) -> np.ndarray:
    """(N, *S) Grad-CAM maps of ``x`` (N, *S, C) for ``classes`` (default: each case's predicted class).

    The map is relu(sum_c w_c A_c), w_c the spatial mean of d score / d A_c, with the
    score the class's probability; upsampled linearly to the input grid, scaled to max 1.
    ``elementwise`` is HiResCAM (Draelos & Carin 2020): relu(sum_c A_c * d score / d A_c) voxel by
    voxel, which shows only what the score depends on where a mean gradient would spread it over
    every active voxel (a head ending in max or top-k pooling, segcls's lesion evidence).
    """
    import tensorflow as tf

    run = _cam_function(model, layer)
    xt = tf.constant(np.asarray(x, dtype=np.float32))
    picked = tf.constant([-1] * len(x) if classes is None else classes, tf.int32)
    features, grads = run(xt, picked)
    if grads is None:  # Keras hands some intermediate outputs back as copies (seen: a pooling before Flatten)
        raise ValueError(f"no gradient of the class score reaches layer {layer!r}")
    grads = grads.numpy()
    features = features.numpy()
    axes = tuple(range(1, features.ndim - 1))
    weights = grads if elementwise else grads.mean(axis=axes, keepdims=True)
    cams = np.maximum((weights * features).sum(axis=-1), 0.0)
    return np.stack([_to_input(c, x.shape[1:-1]) for c in cams])


_CAM_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {layer: traced function}


def _cam_function(model, layer: str):
    """``run(x, classes) -> (features, d score / d features)`` for ``layer`` of ``model``, traced once per
    model and layer (a class of -1 is the case's predicted one). Eager, the forward and backward passes cost
    about 800 Python-dispatched ops per call; an evaluation explains every held-out case."""
    import keras
    import tensorflow as tf

    functions = _CAM_FUNCTIONS.setdefault(model, {})
    if layer not in functions:
        out = model.output[PROBABILITIES] if isinstance(model.output, dict) else model.output
        probe = keras.Model(model.inputs, [model.get_layer(layer).output, out])

        @tf.function(reduce_retracing=True)
        def run(xt, classes):
            with tf.GradientTape() as tape:
                features, probs = probe(xt, training=False)
                picked = tf.where(classes < 0, tf.argmax(probs, axis=-1, output_type=tf.int32), classes)
                score = tf.gather(probs, picked, axis=1, batch_dims=1)
            return features, tape.gradient(score, features)

        functions[layer] = run
    return functions[layer]


def occlusion(net: Callable, x: np.ndarray, size: int = 8, stride: int | None = None, batch: int = 16,
              classes: list[int] | None = None) -> np.ndarray:
    """(N, *S) occlusion sensitivity: the drop of the class probability when a cube of ``size``
    voxels (moved by ``stride``, default ``size``) is set to the case's mean, spread over the cube.

    ``net`` is any ``net(x) -> probabilities`` (or a dict with them), so exported runtimes work.
    """
    stride = stride or size
    x = np.asarray(x, dtype=np.float32)
    spatial = x.shape[1:-1]
    starts = [range(0, max(s - size, 0) + 1, stride) for s in spatial]
    corners = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(spatial))
    maps = []
    for i, case in enumerate(x):
        base = _probs(net(case[None]))[0]
        k = int(np.argmax(base)) if classes is None else classes[i]
        drop, count = np.zeros(spatial, np.float64), np.zeros(spatial, np.float64)
        fill = case.mean(axis=tuple(range(len(spatial))))
        for j in range(0, len(corners), batch):
            chunk = corners[j:j + batch]
            occluded = np.repeat(case[None], len(chunk), axis=0)
            boxes = [tuple(slice(c, c + size) for c in corner) for corner in chunk]
            for b, box in enumerate(boxes):
                occluded[(b, *box)] = fill
            p = _probs(net(occluded))[:, k]
            for b, box in enumerate(boxes):
                drop[box] += base[k] - p[b]
                count[box] += 1
        maps.append(_scaled(np.maximum(drop / np.maximum(count, 1), 0.0)))
    return np.stack(maps).astype(np.float32)


def mass_in_mask(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) share of each map's total in its mask (NaN where a map is all zero).

    Chance is the mask's share of the volume; a map that points at the lesion scores near 1.
    """
    maps = np.asarray(maps, dtype=np.float64)
    total = maps.reshape(len(maps), -1).sum(axis=1)
    inside = (maps * (np.asarray(masks) > 0)).reshape(len(maps), -1).sum(axis=1)
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def _probs(y) -> np.ndarray:
    return np.asarray(y[PROBABILITIES] if isinstance(y, dict) else y, dtype=np.float64)


def _to_input(cam: np.ndarray, spatial) -> np.ndarray:
    zoom = [s / c for s, c in zip(spatial, cam.shape)]
    up = ndimage.zoom(cam, zoom, order=1) if any(z != 1 for z in zoom) else cam
    return _scaled(up[tuple(slice(0, s) for s in spatial)]).astype(np.float32)


def _scaled(a: np.ndarray) -> np.ndarray:
    peak = float(a.max()) if a.size else 0.0
    return a / peak if peak > 0 else np.zeros_like(a)
