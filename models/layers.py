"""Layers that change how a standard Keras layer computes, not what it computes.

``FusedBatchNormalization`` is Keras's ``BatchNormalization`` whose training pass
runs TensorFlow's fused kernel (``FusedBatchNormV3``, oneDNN on CPU). Keras 3
computes batch statistics with ``tf.nn.moments`` and applies them with separate
element-wise ops, which makes six passes over the activation forward and more
backward; the fused kernel makes two each way. Inference, masks, renormalization
and other backends take Keras's own path, so the layer's results, weights and
config are those of ``BatchNormalization``: the moving variance is updated with
the biased batch variance, as Keras does (the kernel returns the unbiased one).
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="medflow")
class FusedBatchNormalization(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with a fused training kernel for channels-last 4D/5D float32 input.

    Input: (B, H, W, C) or (B, D, H, W, C); output: the same shape.
    """

    def _fusable(self, inputs, training, mask) -> bool:
        rank = len(inputs.shape)
        return (bool(training) and self.trainable and mask is None and not self.renorm
                and not getattr(self, "synchronized", False) and keras.backend.backend() == "tensorflow"
                and rank in (4, 5) and self.axis in (-1, rank - 1)
                and keras.backend.standardize_dtype(inputs.dtype) == "float32" and self.epsilon >= 1.001e-5)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones((channels,), inputs.dtype)
        beta = self.beta if self.center else tf.zeros((channels,), inputs.dtype)
        x = inputs
        if len(inputs.shape) == 5:
            # Statistics are per channel over every other axis, so (B, D*H, W, C) is the same computation;
            # TensorFlow's 4D kernel runs it about twice as fast as its 5D one (medflow bench train --trace).
            shape = tf.shape(inputs)
            x = tf.reshape(inputs, tf.stack([shape[0], shape[1] * shape[2], shape[3], channels]))
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, is_training=True, data_format="NHWC")
        if len(inputs.shape) == 5:
            outputs = tf.ensure_shape(tf.reshape(outputs, shape), inputs.shape)
        # The kernel returns the unbiased variance (n / (n - 1)); Keras's moving variance uses the biased one.
        n = tf.cast(tf.size(inputs) // channels, inputs.dtype)
        variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return ops.cast(outputs, self.compute_dtype)


BATCH_NORMS = ("batch", "keras_batch")


def batch_norm(kind: str, name: str, **kwargs):
    """A batch-norm layer: 'batch' is :class:`FusedBatchNormalization`, 'keras_batch' Keras's own (unfused).

    Both compute the same; 'keras_batch' saves a ``.keras`` file of standard Keras
    layers only, which loads where medflow is not installed.
    """
    if kind not in BATCH_NORMS:
        raise ValueError(f"batch norm must be one of {BATCH_NORMS}. Received: {kind!r}")
    return (FusedBatchNormalization if kind == "batch" else layers.BatchNormalization)(name=name, **kwargs)
