"""``mil``: attention-based multiple-instance learning over lesion-sized 3D patches (Ilse et al. 2018).

A case is a bag of instances; only some (the lesion's) carry the class. A small
conv encoder, shared by every position, turns the volume into a grid of
embeddings at stride 4: each grid cell is one instance, a patch of about a
lesion's size (12 mm cells at 3 mm voxels). Gated attention (Ilse et al., eq. 9)
scores each instance, the softmax over the bag weighs them, and the weighted mean
embedding is classified. The attention map says which patches decided. No mask
is needed: this is the model for datasets without lesion masks.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from medflow.models.layers import batch_norm
from medflow.models.registry import register_model


@keras.saving.register_keras_serializable(package="medflow")
class GatedAttentionPooling(layers.Layer):
    """Gated attention MIL pooling: (B, *S, F) instances -> (B, F) bag embedding.

    a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k))), z = sum_k a_k h_k.
    ``return_attention`` gives (B, *S) weights instead (they sum to 1 per bag).
    """

    def __init__(self, units: int = 32, return_attention: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.return_attention = int(units), bool(return_attention)

    def build(self, input_shape):
        f = input_shape[-1]
        self.v = self.add_weight(shape=(f, self.units), initializer="glorot_uniform", name="V")
        self.u = self.add_weight(shape=(f, self.units), initializer="glorot_uniform", name="U")
        self.w = self.add_weight(shape=(self.units, 1), initializer="glorot_uniform", name="w")

    def attention(self, inputs):
        spatial = tuple(inputs.shape[1:-1])
        n = 1
        for s in spatial:
            n *= s
        h = ops.reshape(inputs, (-1, n, inputs.shape[-1]))
        score = ops.matmul(ops.tanh(ops.matmul(h, self.v)) * ops.sigmoid(ops.matmul(h, self.u)), self.w)[..., 0]
        return h, ops.softmax(score, axis=-1), spatial

    def call(self, inputs):
        h, a, spatial = self.attention(inputs)
        if self.return_attention:
            return ops.reshape(a, (-1, *spatial))
        return ops.sum(h * a[..., None], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *input_shape[1:-1]) if self.return_attention else (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "units": self.units, "return_attention": self.return_attention}


@register_model("mil", task="classification")
def mil(input_shape, n_classes, filters=16, attention_units=32, dropout=0.3, bn_momentum=0.9, norm="batch"):
    """Conv instance encoder (3 levels, stride 4), gated attention pooling, dense softmax."""
    nd = len(input_shape) - 1
    if nd not in (2, 3):
        raise ValueError(f"input_shape must be (H, W, C) or (D, H, W, C). Received: input_shape={input_shape}")
    conv = layers.Conv2D if nd == 2 else layers.Conv3D
    pool = layers.MaxPooling2D if nd == 2 else layers.MaxPooling3D
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for level in range(3):
        x = conv(filters * 2**level, 3, padding="same", use_bias=False, name=f"enc{level}_conv")(x)
        x = layers.Activation("relu", name=f"enc{level}_relu")(batch_norm(norm, f"enc{level}_bn",
                                                                          momentum=bn_momentum)(x))
        if level < 2:
            x = pool(2, padding="same", name=f"enc{level}_pool")(x)
    x = conv(filters * 4, 1, activation="relu", name="instances")(x)  # one embedding per grid cell
    bag = GatedAttentionPooling(attention_units, name="attention")(x)
    if dropout > 0:
        bag = layers.Dropout(dropout, name="head_dropout")(bag)
    out = layers.Dense(n_classes, activation="softmax", name="probabilities", dtype="float32")(bag)
    return keras.Model(inputs, out, name="mil")
