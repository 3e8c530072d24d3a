"""Classifiers for 2D slices and 3D volumes: logistic regression, MLP, VGG-style CNN, ResNet-style CNN.

All outputs are class probabilities (softmax). Dropout and L1/L2 weight decay
come from config; only standard Keras layers are used.
"""

from __future__ import annotations

import keras
from keras import layers, regularizers

from medflow.models.layers import batch_norm
from medflow.models.pooling import GlobalLogSumExpPooling, GlobalTopKPooling
from medflow.models.registry import register_model


def _layers(nd: int):
    if nd == 2:
        return layers.Conv2D, layers.AveragePooling2D, layers.MaxPooling2D, layers.GlobalAveragePooling2D
    return layers.Conv3D, layers.AveragePooling3D, layers.MaxPooling3D, layers.GlobalAveragePooling3D


_POOLINGS = ("avg", "max", "avgmax", "topk", "lse")


def _global_pool(x, nd: int, pooling: str, topk_fraction: float = 0.02, lse_r: float = 5.0):
    """Global pooling of (N, *spatial, C) features to (N, C), or (N, 2C) for 'avgmax'.

    A lesion covers a few voxels of a whole head: averaging dilutes its response
    by the volume, while the maximum keeps it. 'avgmax' concatenates both; 'topk'
    (mean of the top ``topk_fraction`` positions) and 'lse' (LogSumExp, sharpness
    ``lse_r``) are smooth maxima whose gradient reaches more than one voxel.
    """
    if pooling not in _POOLINGS:
        raise ValueError(f"pooling must be one of {_POOLINGS}. Received: pooling={pooling!r}")
    avg = (layers.GlobalAveragePooling2D if nd == 2 else layers.GlobalAveragePooling3D)
    mx = (layers.GlobalMaxPooling2D if nd == 2 else layers.GlobalMaxPooling3D)
    if pooling == "avg":
        return avg(name="gap")(x)
    if pooling == "max":
        return mx(name="gmp")(x)
    if pooling == "topk":
        return GlobalTopKPooling(topk_fraction, name="topk")(x)
    if pooling == "lse":
        return GlobalLogSumExpPooling(lse_r, name="lse")(x)
    return layers.Concatenate(name="gap_gmp")([avg(name="gap")(x), mx(name="gmp")(x)])


def _bn(name: str, momentum: float, norm: str = "batch"):
    return batch_norm(norm, name, momentum=momentum)


def _reg(l1: float, l2: float):
    return regularizers.L1L2(l1=l1, l2=l2) if (l1 or l2) else None


def _head(x, n_classes, dropout, l1, l2):
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    return layers.Dense(n_classes, activation="softmax", kernel_regularizer=_reg(l1, l2), name="probabilities",
                        dtype="float32")(x)


def _check(input_shape):
    nd = len(input_shape) - 1
    if nd not in (2, 3):
        raise ValueError(f"input_shape must be (H, W, C) or (D, H, W, C). Received: input_shape={input_shape}")
    return nd


@register_model("logistic", task="classification")
def logistic(input_shape, n_classes, downsample=4, dropout=0.0, l1=0.0, l2=1e-4):
    """Softmax regression on the input average-pooled by ``downsample`` and flattened."""
    nd = _check(input_shape)
    inputs = keras.Input(input_shape, name="image")
    x = _layers(nd)[1](downsample, padding="same", name="downsample")(inputs) if downsample > 1 else inputs
    x = layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, _head(x, n_classes, dropout, l1, l2), name="logistic")


@register_model("mlp", task="classification")
def mlp(input_shape, n_classes, downsample=4, units=(256, 64), dropout=0.3, l1=0.0, l2=1e-4):
    """Multi-layer perceptron on the downsampled, flattened input."""
    nd = _check(input_shape)
    inputs = keras.Input(input_shape, name="image")
    x = _layers(nd)[1](downsample, padding="same", name="downsample")(inputs) if downsample > 1 else inputs
    x = layers.Flatten(name="flatten")(x)
    for i, u in enumerate(units):
        x = layers.Dense(u, activation="relu", kernel_regularizer=_reg(l1, l2), name=f"dense{i}")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"dropout{i}")(x)
    return keras.Model(inputs, _head(x, n_classes, 0.0, l1, l2), name="mlp")


@register_model("cnn", task="classification")
def cnn(input_shape, n_classes, filters=16, blocks=4, dropout=0.3, l1=0.0, l2=1e-4, pooling="avgmax",
        bn_momentum=0.9, norm="batch", topk_fraction=0.02, lse_r=5.0):
    """VGG-style: ``blocks`` x (conv-BN-ReLU x2, max-pool), global pooling, dense softmax.

    ``bn_momentum`` 0.9 (Keras: 0.99) lets the running statistics follow the weights
    within an epoch of a few dozen steps, which is what small medical datasets give.
    ``norm``: 'batch' (fused kernel) or 'keras_batch' (Keras's own layer), see models/layers.py.
    """
    nd = _check(input_shape)
    conv, _, maxpool, _ = _layers(nd)
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for b in range(blocks):
        for i in (1, 2):
            x = conv(filters * 2**b, 3, padding="same", use_bias=False, kernel_regularizer=_reg(l1, l2),
                     name=f"block{b}_conv{i}")(x)
            x = _bn(f"block{b}_bn{i}", bn_momentum, norm)(x)
            x = layers.Activation("relu", name=f"block{b}_relu{i}")(x)
        x = maxpool(2, padding="same", name=f"block{b}_pool")(x)
    x = _global_pool(x, nd, pooling, topk_fraction, lse_r)
    return keras.Model(inputs, _head(x, n_classes, dropout, l1, l2), name="cnn")


@register_model("resnet", task="classification")
def resnet(input_shape, n_classes, filters=16, stages=(2, 2, 2), dropout=0.3, l1=0.0, l2=1e-4, pooling="avgmax",
           bn_momentum=0.9, norm="batch", topk_fraction=0.02, lse_r=5.0):
    """ResNet-style: a stem, then stages of basic residual blocks (stride 2 between stages), global pooling."""
    nd = _check(input_shape)
    conv = _layers(nd)[0]
    reg = _reg(l1, l2)
    inputs = keras.Input(input_shape, name="image")
    x = conv(filters, 5, strides=2, padding="same", use_bias=False, kernel_regularizer=reg, name="stem_conv")(inputs)
    x = layers.Activation("relu", name="stem_relu")(_bn("stem_bn", bn_momentum, norm)(x))
    for s, n_blocks in enumerate(stages):
        f = filters * 2**s
        for b in range(n_blocks):
            stride = 2 if (b == 0 and s > 0) else 1
            name = f"stage{s}_block{b}"
            y = conv(f, 3, strides=stride, padding="same", use_bias=False, kernel_regularizer=reg, name=f"{name}_conv1")(x)
            y = layers.Activation("relu", name=f"{name}_relu1")(_bn(f"{name}_bn1", bn_momentum, norm)(y))
            y = conv(f, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"{name}_conv2")(y)
            y = _bn(f"{name}_bn2", bn_momentum, norm)(y)
            if stride != 1 or x.shape[-1] != f:
                x = conv(f, 1, strides=stride, padding="same", use_bias=False, kernel_regularizer=reg,
                         name=f"{name}_proj")(x)
            x = layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([x, y]))
    x = _global_pool(x, nd, pooling, topk_fraction, lse_r)
    return keras.Model(inputs, _head(x, n_classes, dropout, l1, l2), name="resnet")
