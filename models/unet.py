"""U-Net for 2D and 3D segmentation (Ronneberger et al. 2015; Cicek et al. 2016).

Configurable depth, base filters, normalization, dropout and residual blocks;
standard Keras layers plus medflow's registered ones (models/layers.py), so the
saved model loads with ``safe_mode=True``. ``norm: batch`` is batch normalization
with TensorFlow's fused training kernel; ``keras_batch`` is Keras's own layer.
Output: per-voxel class probabilities (softmax), shape (*S, n_classes).
"""

from __future__ import annotations

import keras
from keras import layers

from medflow.models.layers import BATCH_NORMS, batch_norm
from medflow.models.registry import register_model

_NORMS = (*BATCH_NORMS, "group", "none")


def _norm(x, kind: str, name: str, momentum: float = 0.99):
    if kind in BATCH_NORMS:
        return batch_norm(kind, name, momentum=momentum)(x)
    if kind == "group":
        return layers.GroupNormalization(groups=min(8, x.shape[-1]), name=name)(x)
    return x


def _block(x, filters: int, nd: int, norm: str, dropout: float, residual: bool, name: str, momentum: float = 0.99):
    conv = layers.Conv2D if nd == 2 else layers.Conv3D
    skip = x
    for i in (1, 2):
        x = conv(filters, 3, padding="same", use_bias=norm == "none", name=f"{name}_conv{i}")(x)
        x = _norm(x, norm, f"{name}_norm{i}", momentum)
        if i == 1 or not residual:
            x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
        if i == 1 and dropout > 0:
            x = (layers.SpatialDropout2D if nd == 2 else layers.SpatialDropout3D)(dropout, name=f"{name}_drop")(x)
    if residual:
        if skip.shape[-1] != filters:
            skip = conv(filters, 1, padding="same", name=f"{name}_proj")(skip)
        x = layers.Add(name=f"{name}_add")([x, skip])
        x = layers.Activation("relu", name=f"{name}_relu2")(x)
    return x


def unet_features(inputs, depth: int = 4, filters: int = 32, norm: str = "batch", dropout: float = 0.0,
                  residual: bool = False, max_filters: int = 320, bn_momentum: float = 0.99):
    """The U-Net body: encoder, bottleneck and decoder, returning the last decoder level's features.

    Args:
        inputs: a (B, H, W, C) or (B, D, H, W, C) Keras tensor; spatial sizes divisible by 2**depth.
        depth: number of down-sampling steps.
        filters: filters of the first level, doubled per level up to ``max_filters``.
        norm: 'batch' (fused kernel), 'keras_batch' (Keras's own layer), 'group' or 'none'.
        dropout: spatial dropout rate inside each encoder block.
        residual: residual blocks (Res-U-Net) instead of plain double convolutions.
        bn_momentum: batch norm's running-statistics momentum (training itself uses batch statistics).

    Returns:
        (B, *S, filters) features at the input resolution.
    """
    shape = tuple(inputs.shape[1:])
    nd = len(shape) - 1
    if nd not in (2, 3):
        raise ValueError(f"input_shape must be (H, W, C) or (D, H, W, C). Received: input_shape={shape}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}. Received: norm={norm!r}")
    if any(s is not None and s % 2**depth for s in shape[:-1]):  # None: any size the caller pads
        raise ValueError(f"spatial sizes {shape[:-1]} must be divisible by 2**depth = {2**depth}")
    pool = layers.MaxPooling2D if nd == 2 else layers.MaxPooling3D
    up = layers.Conv2DTranspose if nd == 2 else layers.Conv3DTranspose
    x, skips = inputs, []
    for level in range(depth):
        x = _block(x, min(filters * 2**level, max_filters), nd, norm, dropout, residual, f"enc{level}", bn_momentum)
        skips.append(x)
        x = pool(2, name=f"pool{level}")(x)
    x = _block(x, min(filters * 2**depth, max_filters), nd, norm, dropout, residual, "bottleneck", bn_momentum)
    for level in reversed(range(depth)):
        f = min(filters * 2**level, max_filters)
        x = up(f, 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"cat{level}")([x, skips[level]])
        x = _block(x, f, nd, norm, 0.0, residual, f"dec{level}", bn_momentum)
    return x


def build_unet(input_shape, n_classes: int, depth: int = 4, filters: int = 32, norm: str = "batch",
               dropout: float = 0.0, residual: bool = False, max_filters: int = 320,
               bn_momentum: float = 0.99) -> keras.Model:
    """Segmentation U-Net: :func:`unet_features` and a softmax over ``n_classes`` (background included).

    ``bn_momentum``: a run of a few hundred steps (a few minutes' budget) wants 0.9, so that the running
    statistics that inference uses come from the trained weights rather than the first steps."""
    if len(input_shape) not in (3, 4):
        raise ValueError(f"input_shape must be (H, W, C) or (D, H, W, C). Received: input_shape={input_shape}")
    nd = len(input_shape) - 1
    inputs = keras.Input(input_shape, name="image")
    x = unet_features(inputs, depth, filters, norm, dropout, residual, max_filters, bn_momentum)
    conv = layers.Conv2D if nd == 2 else layers.Conv3D
    outputs = conv(n_classes, 1, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"unet{nd}d")


@register_model("unet2d", task="segmentation")
def unet2d(input_shape, n_classes, depth=4, filters=32, norm="batch", dropout=0.0, residual=False, max_filters=320,
           bn_momentum=0.99):
    return build_unet(input_shape, n_classes, depth, filters, norm, dropout, residual, max_filters, bn_momentum)


@register_model("unet3d", task="segmentation")
def unet3d(input_shape, n_classes, depth=3, filters=16, norm="batch", dropout=0.0, residual=False, max_filters=256,
           bn_momentum=0.99):
    return build_unet(input_shape, n_classes, depth, filters, norm, dropout, residual, max_filters, bn_momentum)
