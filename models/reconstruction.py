"""Learned CT reconstruction: FBPConvNet (Jin, McCann, Froustey & Unser, IEEE TIP 2017).

A residual U-Net on the FBP image: output = FBP + U-Net(FBP), so the network
learns to remove streaks and noise rather than to draw the image. For export,
:func:`sinogram_model` puts the FBP layer (models/ct_ops.py) in front, so the
model takes a sinogram in the geometry it was trained for and returns the image.
"""

from __future__ import annotations

import keras
from keras import layers

from medflow.models.ct_ops import FilteredBackprojection
from medflow.models.registry import register_model
from medflow.models.unet import unet_features


@register_model("fbpconvnet", task="reconstruction")
def fbpconvnet(input_shape, n_classes=1, depth=4, filters=32, norm="batch", dropout=0.0, residual=False,
               max_filters=256):
    """(B, S, S, 1) FBP images -> (B, S, S, 1) reconstructions (``n_classes``: output channels)."""
    inputs = keras.Input(input_shape, name="fbp")
    x = unet_features(inputs, depth, filters, norm, dropout, residual, max_filters)
    # Zero-initialized, so training starts from the FBP image itself rather than from noise added to it.
    correction = layers.Conv2D(n_classes, 1, kernel_initializer="zeros", name="correction", dtype="float32")(x)
    outputs = layers.Add(name="reconstruction", dtype="float32")([inputs, correction])
    return keras.Model(inputs, outputs, name="fbpconvnet")


def sinogram_model(net: keras.Model, geometry: dict) -> keras.Model:
    """(B, D, A) sinograms -> (B, S, S, 1) images: FBP with the training geometry, then ``net``.

    Args:
        net: an image-to-image model trained on FBP inputs of ``geometry``.
        geometry: data/ct/ellipses.EllipsesSpec.geometry() (image_size, angles_deg, detectors, fbp_filter,
            frequency_scaling).
    """
    inputs = keras.Input((geometry["detectors"], len(geometry["angles_deg"])), name="sinogram")
    fbp = FilteredBackprojection(geometry["image_size"], geometry["angles_deg"], geometry["fbp_filter"],
                                 geometry.get("frequency_scaling", 1.0), geometry.get("fbp_scale", 1.0),
                                 geometry.get("fbp_offset", 0.0), name="fbp")(inputs)
    return keras.Model(inputs, net(fbp), name=f"{net.name}_from_sinogram")
