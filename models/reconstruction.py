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


@register_model("fbpunet", task="reconstruction")
def fbpunet(input_shape, n_classes=1, scales=5, channels=(32, 32, 64, 64, 128, 128), skip_channels=4,
            use_sigmoid=False):
    """DIVal's FBP + U-Net (``FBPUNetReconstructor``; Baguer, Leuschner & Schmidt 2020), layer for layer.

    (B, S, S, 1) FBP images -> (B, S, S, 1). ``scales`` levels with ``channels[:scales]``: an input conv,
    then per level a stride-2 conv and a conv (BN, LeakyReLU 0.2); the way up upsamples bilinearly and
    concatenates a 1x1 conv of the skip squeezed to ``skip_channels``; a 1x1 conv out, not residual.
    S must be divisible by 2^(scales - 1).
    """
    if not 1 <= scales <= len(channels):
        raise ValueError(f"fbpunet: scales must be 1..{len(channels)}, got {scales}")
    chans = [int(c) for c in channels[:scales]]

    def conv_bn(x, filters, kernel=3, strides=1, name=""):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", name=f"{name}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
        return layers.LeakyReLU(0.2, name=f"{name}_act")(x)

    inputs = keras.Input(input_shape, name="fbp")
    xs = [conv_bn(inputs, chans[0], name="in")]
    for i in range(1, scales):
        x = conv_bn(xs[-1], chans[i], strides=2, name=f"down{i}_a")
        xs.append(conv_bn(x, chans[i], name=f"down{i}_b"))
    x = xs[-1]
    for i in range(1, scales):
        level = scales - 1 - i
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{i}_resize")(x)
        skip = conv_bn(xs[level], skip_channels, kernel=1, name=f"up{i}_skip")
        x = layers.Concatenate(name=f"up{i}_cat")([x, skip])
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"up{i}_bn_in")(x)
        x = conv_bn(x, chans[level], name=f"up{i}_a")
        x = conv_bn(x, chans[level], name=f"up{i}_b")
    out = layers.Conv2D(n_classes, 1, name="out", dtype="float32")(x)
    if use_sigmoid:
        out = layers.Activation("sigmoid", name="sigmoid", dtype="float32")(out)
    return keras.Model(inputs, out, name="fbpunet")
