"""``segcls``: a U-Net that segments the lesion and classifies the case from the lesion evidence.

A lesion of 8-20 mm is a few dozen voxels of a head; a classifier trained on the
case label alone has to find it from about a hundred labels. Telling the network
where the lesion is (Retina U-Net, Jaeger et al. 2019; nnDetection) turns the
problem into segmentation, which learns from every voxel. The class head then
reads only what a radiologist would: how sure the lesion map is that something is
there (its maximum and top-k mean), how much of it there is, the signed contrast of
the image under it against its surroundings (bright or dark), and a little global
context.

Outputs (a dict, names fixed because the task reads them):
    ``lesion``: (B, *S, 1) voxel lesion probability (sigmoid).
    ``probabilities``: (B, K) class probabilities (softmax).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from medflow.models.registry import LESION, PROBABILITIES, register_model
from medflow.models.unet import unet_features


@keras.saving.register_keras_serializable(package="medflow")
class LesionEvidence(layers.Layer):
    """Pooled lesion evidence of one case: [p (B, *S, 1), image (B, *S, C)] -> (B, 3 + C).

    Features: max p, mean of the ``topk`` largest p (a count of voxels, about the smallest lesion's
    size, so the feature means the same on a training patch and on a whole head), log(1 + sum p)
    (lesion volume in voxels), and per channel the p-weighted mean of image - local mean (a box of
    ``context`` voxels), i.e. how much brighter or darker the lesion is than its surroundings.
    Spatial sizes may be unknown until called (a fully convolutional model).
    """

    def __init__(self, topk: int = 8, context: int = 7, **kwargs):
        super().__init__(**kwargs)
        if int(topk) < 1:
            raise ValueError(f"topk must be a voxel count >= 1. Received: topk={topk}")
        if context < 3 or context % 2 == 0:
            raise ValueError(f"context must be an odd size >= 3. Received: context={context}")
        self.topk, self.context = int(topk), int(context)

    def call(self, inputs):
        p, image = inputs
        axes = tuple(range(1, len(p.shape) - 1))
        flat = ops.reshape(p, (ops.shape(p)[0], -1))
        top, _ = ops.top_k(flat, self.topk, sorted=False)
        mass = ops.sum(flat, axis=-1)
        local = ops.average_pool(image, self.context, strides=1, padding="same")
        contrast = ops.sum(p * (image - local), axis=axes) / (mass[:, None] + 1.0)
        return ops.concatenate([ops.max(flat, axis=-1)[:, None], ops.mean(top, axis=-1)[:, None],
                                ops.log(1.0 + mass)[:, None], contrast], axis=-1)  # log1p has no ONNX op

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 3 + input_shape[1][-1])

    def get_config(self):
        return {**super().get_config(), "topk": self.topk, "context": self.context}


@keras.saving.register_keras_serializable(package="medflow")
class StopGradient(layers.Layer):
    """The identity; while training, no gradient flows back through it (the loss after it trains nothing
    before it). Outside training gradients pass, so Grad-CAM still sees how the class score depends on the map."""

    def call(self, inputs, training=None):
        return ops.stop_gradient(inputs) if training else inputs


def build_segcls(input_shape, n_classes: int, depth: int = 3, filters: int = 8, norm: str = "batch",
                 dropout: float = 0.0, residual: bool = False, max_filters: int = 64, topk: int = 8,
                 context: int = 7, global_features: bool = True, head_dropout: float = 0.2,
                 detach: bool = True, bn_momentum: float = 0.9, head_units: int = 0) -> keras.Model:
    """The segcls model for (*S, C) inputs (S divisible by 2**depth, or None: any such size) and ``n_classes``
    case classes.

    ``bn_momentum`` 0.9 (Keras: 0.99): with a batch of 2 whole heads the running statistics must keep up
    with the weights for validation and inference to see what training saw.

    ``head_units`` 0: the class layer is a softmax regression on the evidence (and global features), which
    the train stage refits on whole training volumes when the model trained on patches
    (``train.refit_head``); > 0: a hidden ReLU layer of that many units (with ``head_dropout``) before it.
    """
    if len(input_shape) not in (3, 4):
        raise ValueError(f"input_shape must be (H, W, C) or (D, H, W, C). Received: input_shape={input_shape}")
    nd = len(input_shape) - 1
    conv = layers.Conv2D if nd == 2 else layers.Conv3D
    inputs = keras.Input(input_shape, name="image")
    features = unet_features(inputs, depth, filters, norm, dropout, residual, max_filters, bn_momentum)
    # The bias starts at a small prior (p ~ 0.02), as RetinaNet's head does: from p = 0.5 everywhere the first
    # epochs would only learn that almost nothing is lesion; much lower, the sigmoid saturates.
    lesion = conv(1, 1, activation="sigmoid", bias_initializer=keras.initializers.Constant(-4.0), name=LESION,
                  dtype="float32")(features)
    # Evidence features are O(1) to O(10) by construction; batch statistics of 8 cases would be noisier.
    seen, body = lesion, features
    if detach:
        # The class loss stays out of the lesion map and the U-Net body: a case label says nothing about where
        # the lesion is, and early in training its gradient only disturbs the segmentation that has to form first.
        seen = StopGradient(name="detach_lesion")(lesion)
        body = StopGradient(name="detach_features")(features)
    x = LesionEvidence(topk, context, name="evidence")([seen, inputs])
    if global_features:
        pooled = (layers.GlobalAveragePooling2D if nd == 2 else layers.GlobalAveragePooling3D)(name="gap")(body)
        x = layers.Concatenate(name="case_features")([x, pooled])
    if head_units > 0:
        x = layers.Dense(head_units, activation="relu", name="head_dense")(x)
        if head_dropout > 0:
            x = layers.Dropout(head_dropout, name="head_dropout")(x)
    # Zero-initialized: the evidence is not standardized (log volume is ~5 on any head), and random weights on it
    # start the class loss far above log K. The layer starts from uniform probabilities instead.
    probs = layers.Dense(n_classes, activation="softmax", kernel_initializer="zeros", name=PROBABILITIES,
                         dtype="float32")(x)
    return keras.Model(inputs, {LESION: lesion, PROBABILITIES: probs}, name=f"segcls{nd}d")


@register_model("segcls", task="classification")
def segcls(input_shape, n_classes, depth=3, filters=8, norm="batch", dropout=0.0, residual=False, max_filters=64,
           topk=8, context=7, global_features=True, head_dropout=0.2, detach=True, bn_momentum=0.9, head_units=0):
    return build_segcls(input_shape, n_classes, depth, filters, norm, dropout, residual, max_filters, topk,
                        context, global_features, head_dropout, detach, bn_momentum, head_units)
