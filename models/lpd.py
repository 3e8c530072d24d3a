"""Learned primal-dual reconstruction (Adler & Öktem, IEEE TMI 37 (2018) 1322).

Unrolled primal-dual iterations in which small CNNs replace the proximal steps,
with the forward operator A and its adjoint inside the graph
(models/projector.ParallelBeamProjector). The defaults are DIVal's
``LearnedPDReconstructor`` (Leuschner et al.) for the ellipses benchmark:

* 10 iterations, 5 primal and 5 dual channels (channel 0 of each is the iterate,
  the rest memory);
* each update is 3 convolutions (3 x 3, 32 channels, PReLU with slope 0 at start
  between them), Glorot-uniform weights, zero biases, no normalization;
* A is divided by its operator norm and the sinogram with it, so every
  iteration's inputs have the scale of the image;
* primal and dual start at zero (DIVal ``init_fbp`` False).

Iteration i::

    dual   += Gamma_i([dual, A primal[1], y / ||A||])
    primal += Lambda_i([primal, A^T dual[0]])

and the reconstruction is primal channel 0, mapped to the truth's units by the
geometry's ``fbp_scale`` and ``fbp_offset`` (HU for CT volumes; identity for the
ellipses). Input (B, D, A) sinograms in the geometry's units, output (B, S, S, 1).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from medflow.models.projector import ParallelBeamProjector
from medflow.models.registry import register_model


@keras.saving.register_keras_serializable(package="medflow")
class ZeroState(keras.layers.Layer):
    """(B, ...) any tensor -> (B, H, W, C) zeros: the iterates' start, sized by the batch at run time."""

    def __init__(self, height: int, width: int, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width, self.channels = int(height), int(width), int(channels)

    def call(self, x):
        return ops.zeros((ops.shape(x)[0], self.height, self.width, self.channels), dtype="float32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, self.channels)

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width, "channels": self.channels}


@keras.saving.register_keras_serializable(package="medflow")
class Channels(keras.layers.Layer):
    """(..., C) -> (..., stop - start): a channel slice, as a named layer (serializable, ONNX Slice)."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, x):
        return x[..., self.start:self.stop]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.stop - self.start)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


def _block(x, n_out: int, n_layer: int, width: int, kernel: int, name: str):
    """n_layer convolutions: (n_layer - 1) x [conv width, PReLU], then conv n_out (the update)."""
    for j in range(n_layer - 1):
        x = layers.Conv2D(width, kernel, padding="same", name=f"{name}_conv{j}")(x)
        x = layers.PReLU(alpha_initializer="zeros", shared_axes=[1, 2], name=f"{name}_prelu{j}")(x)
    return layers.Conv2D(n_out, kernel, padding="same", name=f"{name}_out")(x)


@register_model("lpd", task="reconstruction", consumes="sinogram")
def lpd(input_shape, n_classes=1, geometry=None, iterations=10, primal=5, dual=5, layers_per_block=3,
        width=32, kernel=3, opnorm=None):
    """(B, D, A) sinograms -> (B, S, S, 1) images.

    Args:
        input_shape: (D, A), the geometry's detectors and angles.
        geometry: the simulate stage's geometry (image_size, angles_deg, detectors); the train stage
            passes it.
        opnorm: ||A|| (the train stage measures it once, data/ct/projector.operator_norm); None
            measures it here.
    """
    from medflow.data.ct.projector import operator_norm, ray_transform

    if not geometry:
        raise ValueError("lpd needs the acquisition geometry (image_size, angles_deg, detectors)")
    size, angles, detectors = int(geometry["image_size"]), list(geometry["angles_deg"]), int(geometry["detectors"])
    if tuple(input_shape[:2]) != (detectors, len(angles)):
        raise ValueError(f"lpd: input {tuple(input_shape[:2])}, the geometry has ({detectors}, {len(angles)})")
    if opnorm is None:
        opnorm = operator_norm(ray_transform(size, tuple(angles), detectors))
    scale = 1.0 / float(opnorm)
    op = ParallelBeamProjector(size, angles, detectors, scale=scale, name="forward")
    adjoint = ParallelBeamProjector(size, angles, detectors, adjoint=True, scale=scale, name="adjoint")

    sinogram = keras.Input((detectors, len(angles)), name="sinogram")
    y = layers.Reshape((detectors, len(angles), 1), name="as_channel")(sinogram)
    y = layers.Rescaling(scale, name="normalize")(y)  # y / ||A||, the scale of the normalized operator
    x = ZeroState(size, size, primal, name="primal_start")(sinogram)
    h = ZeroState(detectors, len(angles), dual, name="dual_start")(sinogram)
    for i in range(iterations):
        evaluated = op(Channels(1, 2, name=f"primal_{i}_arg")(x)) if primal > 1 else op(x)
        update = _block(layers.Concatenate(name=f"dual_{i}_in")([h, evaluated, y]), dual, layers_per_block,
                        width, kernel, f"dual_{i}")
        h = layers.Add(name=f"dual_{i}")([h, update])
        back = adjoint(Channels(0, 1, name=f"dual_{i}_arg")(h))
        update = _block(layers.Concatenate(name=f"primal_{i}_in")([x, back]), primal, layers_per_block,
                        width, kernel, f"primal_{i}")
        x = layers.Add(name=f"primal_{i}")([x, update])
    scale_out, offset_out = float(geometry.get("fbp_scale", 1.0)), float(geometry.get("fbp_offset", 0.0))
    if (scale_out, offset_out) == (1.0, 0.0):
        image = Channels(0, n_classes, name="reconstruction", dtype="float32")(x)
    else:  # the iterates live in A's units (attenuation x pixel); the truth is in HU: the geometry's map
        image = layers.Rescaling(scale_out, offset_out, name="reconstruction", dtype="float32")(
            Channels(0, n_classes, name="image")(x))
    return keras.Model(sinogram, image, name="lpd")
