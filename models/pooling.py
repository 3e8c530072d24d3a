"""Global poolings that keep a small lesion's response: top-k mean and LogSumExp.

A lesion of 8-20 mm is a few voxels of a feature map covering a head. Average
pooling divides its response by the map's size; max pooling keeps it but passes
the gradient through one voxel only. The mean of the top k responses per channel
(Zhou et al., 2018) and LogSumExp (a smooth maximum, Pinheiro & Collobert 2015)
sit between the two.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="medflow")
class GlobalTopKPooling(layers.Layer):
    """Mean of the ``fraction`` largest values per channel: (N, *S, C) -> (N, C).

    Args:
        fraction: share of the spatial positions averaged, in (0, 1]; at least one position.
    """

    def __init__(self, fraction: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1]. Received: fraction={fraction}")
        self.fraction = float(fraction)

    def call(self, inputs):
        channels = inputs.shape[-1]
        positions = 1
        for s in inputs.shape[1:-1]:
            positions *= s
        k = max(1, int(round(self.fraction * positions)))
        flat = ops.transpose(ops.reshape(inputs, (-1, positions, channels)), (0, 2, 1))  # (N, C, S)
        top, _ = ops.top_k(flat, k, sorted=False)
        return ops.mean(top, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "fraction": self.fraction}


@keras.saving.register_keras_serializable(package="medflow")
class GlobalLogSumExpPooling(layers.Layer):
    """``(1/r) log mean exp(r x)`` per channel: (N, *S, C) -> (N, C); r -> 0 is the mean, r -> inf the max.

    Args:
        r: sharpness, > 0.
    """

    def __init__(self, r: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        if not r > 0:
            raise ValueError(f"r must be > 0. Received: r={r}")
        self.r = float(r)

    def call(self, inputs):
        axes = tuple(range(1, len(inputs.shape) - 1))
        positions = 1
        for s in inputs.shape[1:-1]:
            positions *= s
        return (ops.logsumexp(self.r * inputs, axis=axes) - ops.log(float(positions))) / self.r

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "r": self.r}
