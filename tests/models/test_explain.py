"""Explanations whose answer is known: a network that responds only to one blob must highlight that blob."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medflow.models.explain import feature_layers, grad_cam, mass_in_mask, occlusion, pick_layer
from medflow.models.registry import build_model

SHAPE = (16, 16, 16)


def _blob_detector():
    """conv (a 3x3x3 box filter, relu) -> global max -> softmax over [blob, no blob]: it looks only at the
    brightest spot of the volume."""
    inputs = keras.Input((*SHAPE, 1))
    feat = keras.layers.Conv3D(2, 3, padding="same", activation="relu", name="feat")(inputs)
    pooled = keras.layers.GlobalMaxPooling3D()(feat)
    out = keras.layers.Dense(2, activation="softmax", name="probabilities")(pooled)
    model = keras.Model(inputs, out)
    kernel = np.zeros((3, 3, 3, 1, 2), np.float32)
    kernel[..., 0, 0] = 1.0 / 27
    kernel[..., 0, 1] = 0.5 / 27
    model.get_layer("feat").set_weights([kernel, np.zeros(2, np.float32)])
    model.get_layer("probabilities").set_weights([np.array([[2.0, -2.0], [1.0, -1.0]], np.float32),
                                                  np.zeros(2, np.float32)])
    return model


def _volumes():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 0.2, (2, *SHAPE, 1)).astype(np.float32)
    masks = np.zeros((2, *SHAPE), np.uint8)
    masks[0, 3:6, 9:12, 4:7] = 1
    masks[1, 10:13, 2:5, 11:14] = 1
    x[masks == 1] += 3.0
    return x, masks


def test_grad_cam_highlights_the_region_the_network_responds_to():
    model = _blob_detector()
    x, masks = _volumes()
    maps = grad_cam(model, x, "feat", classes=[0, 0])
    assert maps.shape == (2, *SHAPE) and maps.max() == pytest.approx(1.0)
    near = np.stack([np.asarray(keras.ops.max_pool(m[None, ..., None].astype(np.float32), 5, 1, "same"))[0, ..., 0]
                     for m in masks.astype(np.float32)]) > 0  # the blob and its two-voxel rim (the box filter's reach)
    for m, region, mask in zip(maps, near, masks):
        assert region[np.unravel_index(np.argmax(m), m.shape)]
        # the blob stands out; away from it Grad-CAM keeps only the faint weighted activation of the background
        assert m[mask == 1].min() > 0.25 and np.percentile(m[~region], 99) < 0.1  # corners: 8/27 of the box


def test_occlusion_highlights_the_same_region():
    model = _blob_detector()
    x, masks = _volumes()
    maps = occlusion(lambda b: model.predict_on_batch(b), x, size=4, classes=[0, 0])
    assert maps.shape == (2, *SHAPE)
    for m, mask in zip(maps, masks):
        # only the cubes that cover part of the blob lower the score; the rest of the volume stays at zero
        cubes = np.zeros(SHAPE, bool)
        for corner in np.ndindex(4, 4, 4):
            box = tuple(slice(4 * c, 4 * c + 4) for c in corner)
            if mask[box].any():
                cubes[box] = True
        assert m[mask == 1].max() == pytest.approx(1.0) and np.all(m[~cubes] == 0)
        assert mass_in_mask(m[None], cubes[None])[0] == pytest.approx(1.0)


def test_the_layer_is_the_deepest_fine_enough_one():
    model = build_model("cnn", (32, 32, 32, 1), 3, {"filters": 4, "blocks": 4})
    names = [n for n in feature_layers(model) if model.get_layer(n).output.shape[-1] > 1]
    at_3mm = pick_layer(model, (3.0, 3.0, 3.0), 8.0)  # 3 mm inputs: stride 2 (6 mm) is the coarsest allowed
    assert at_3mm in names and model.get_layer(at_3mm).output.shape[1] == 16
    assert names.index(at_3mm) == max(i for i, n in enumerate(names) if model.get_layer(n).output.shape[1] >= 16)
    assert pick_layer(model, (10.0, 10.0, 10.0), 8.0) is None  # no layer resolves 8 mm at 10 mm voxels
    # logistic's only map is its 4x average-pooled input: 12 mm at 3 mm voxels, too coarse
    assert pick_layer(build_model("logistic", (32, 32, 32, 1), 3, {}), (3.0, 3.0, 3.0)) is None
    segcls = build_model("segcls", (16, 16, 16, 1), 3, {"depth": 2, "filters": 4, "max_filters": 8})
    chosen = pick_layer(segcls, (3.0, 3.0, 3.0))
    assert chosen == "lesion"  # the map its class head reads (not the identity that detaches it)
    cams = grad_cam(segcls, np.random.default_rng(0).normal(size=(1, 16, 16, 16, 1)).astype(np.float32), chosen)
    assert cams.shape == (1, 16, 16, 16)
    # built for any size (trained on patches), the layers' voxels follow from the input's shape
    anysize = build_model("segcls", (None, None, None, 1), 3, {"depth": 2, "filters": 4, "max_filters": 8})
    assert pick_layer(anysize, (3.0, 3.0, 3.0), 8.0, (16, 16, 16)) == "lesion"
    assert pick_layer(anysize, (10.0, 10.0, 10.0), 8.0, (16, 16, 16)) is None
    with pytest.raises(ValueError, match="any input size"):
        pick_layer(anysize, (3.0, 3.0, 3.0))
    cams = grad_cam(anysize, np.random.default_rng(0).normal(size=(1, 16, 8, 16, 1)).astype(np.float32), "lesion")
    assert cams.shape == (1, 16, 8, 16)


def test_mass_in_mask():
    maps = np.zeros((2, 4, 4, 4))
    maps[0, 0, 0, 0], maps[0, 3, 3, 3] = 3.0, 1.0
    masks = np.zeros((2, 4, 4, 4))
    masks[:, 0, 0, 0] = 1
    out = mass_in_mask(maps, masks)
    assert out[0] == pytest.approx(0.75) and np.isnan(out[1])


def test_grad_cam_is_traced_once_per_model_and_layer_and_matches_an_eager_tape():
    import tensorflow as tf

    from medflow.models import explain

    model = _blob_detector()
    x, _ = _volumes()
    maps = grad_cam(model, x, "feat", elementwise=True)
    again = grad_cam(model, x[:1], "feat", classes=[1], elementwise=True)
    assert list(explain._CAM_FUNCTIONS[model]) == ["feat"]  # one traced function, reused for any batch and classes
    probe = keras.Model(model.inputs, [model.get_layer("feat").output, model.output])
    for batch, classes, got in ((x, None, maps), (x[:1], [1], again)):
        with tf.GradientTape() as tape:
            feats, probs = probe(tf.constant(batch), training=False)
            picked = np.argmax(probs.numpy(), axis=-1) if classes is None else np.array(classes)
            score = tf.gather(probs, tf.constant(picked, tf.int32), axis=1, batch_dims=1)
        grads = tape.gradient(score, feats).numpy()
        cams = np.maximum((grads * feats.numpy()).sum(-1), 0.0)
        expected = np.stack([c / c.max() if c.max() > 0 else c for c in cams])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    import gc

    del model, probe
    gc.collect()
    assert len(explain._CAM_FUNCTIONS) == 0  # the cache does not keep a model alive
