"""Model builders: output shapes, .keras round trip under safe_mode, loss and metric values."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medflow.models.losses import DiceCELoss, ForegroundDice
from medflow.models.registry import MODELS, build_model, check_model

SHAPES = {"unet2d": (32, 32, 2), "unet3d": (16, 16, 16, 1)}


@pytest.mark.parametrize("name", ["unet2d", "unet3d", "logistic", "mlp", "cnn", "resnet"])
@pytest.mark.parametrize("nd", [2, 3])
def test_shapes_and_roundtrip(tmp_path, name, nd):
    if name.startswith("unet") and name != f"unet{nd}d":
        pytest.skip("one dimensionality per U-Net name")
    shape = SHAPES.get(name, (16, 16, 1) if nd == 2 else (12, 16, 12, 1))
    params = {"depth": 2, "filters": 4} if name.startswith("unet") else {}
    model = build_model(name, shape, 3, params)
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype("float32")
    y = model.predict(x, verbose=0)
    want = (2, *shape[:-1], 3) if name.startswith("unet") else (2, 3)
    assert y.shape == want
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)  # softmax probabilities
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(again.predict(x, verbose=0), y, atol=1e-6)


def test_unet_options_and_errors():
    m = build_model("unet2d", (32, 32, 1), 4, {"depth": 2, "filters": 4, "norm": "group", "residual": True,
                                                 "dropout": 0.1})
    assert any("add" in layer.name for layer in m.layers) and m.output_shape == (None, 32, 32, 4)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth"):
        build_model("unet2d", (30, 32, 1), 2, {"depth": 2})
    with pytest.raises(ValueError, match="no parameter"):
        check_model("cnn", {"depth": 3})
    with pytest.raises(ValueError, match="unknown model"):
        check_model("vit", {})
    assert {MODELS[n].task for n in MODELS} == {"segmentation", "classification", "reconstruction"}


@pytest.mark.parametrize("name,shape", [("unet2d", (16, 16, 1)), ("unet3d", (8, 8, 8, 1))])
def test_unet_bn_momentum_reaches_every_batch_norm_and_round_trips(name, shape, tmp_path):
    def bn(m):
        return {layer.momentum for layer in m.layers if isinstance(layer, keras.layers.BatchNormalization)}

    assert bn(build_model(name, shape, 2, {"depth": 1, "filters": 2})) == {0.99}  # Keras's default stays the default
    model = build_model(name, shape, 2, {"depth": 1, "filters": 2, "bn_momentum": 0.9})
    assert bn(model) == {0.9}
    model.save(tmp_path / "m.keras")
    assert bn(keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)) == {0.9}


def test_dice_ce_against_hand_computation():
    y_true = np.array([[0, 1, 1, 2]])
    y_pred = np.array([[[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3], [0.1, 0.2, 0.7]]], dtype="float32")
    onehot = np.eye(3)[y_true[0]]
    inter = (onehot * y_pred[0]).sum(0)
    denom = onehot.sum(0) + y_pred[0].sum(0)
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    ce = -np.log(y_pred[0][np.arange(4), y_true[0]]).mean()
    expected = ce + 1 - dice[1:].mean()
    got = float(DiceCELoss(3)(y_true, y_pred))
    assert got == pytest.approx(expected, rel=1e-5)
    loss = DiceCELoss.from_config(DiceCELoss(3, ce_weight=0.5).get_config())
    assert loss.ce_weight == 0.5 and loss.n_classes == 3


def test_foreground_dice_metric():
    m = ForegroundDice(3)
    y_true = np.array([[0, 1, 1, 2, 2, 2]])
    pred_labels = np.array([[0, 1, 0, 2, 2, 1]])
    m.update_state(y_true, np.eye(3)[pred_labels].astype("float32"))
    # class 1: inter 1, |P|+|T| = 2+2 -> 0.5; class 2: inter 2, 2+3 -> 0.8
    assert float(m.result()) == pytest.approx((0.5 + 0.8) / 2)


@pytest.mark.parametrize("name", ["logistic", "mlp", "cnn", "resnet"])
def test_classifier_regularization_from_params(name):
    shape = (12, 16, 12, 1)
    plain = build_model(name, shape, 3, {"l1": 0.0, "l2": 0.0, "dropout": 0.0})
    reg = build_model(name, shape, 3, {"l1": 1e-3, "l2": 1e-2, "dropout": 0.5})
    x = np.ones((1, *shape), "float32")
    plain(x)
    reg(x)
    assert not plain.losses and len(reg.losses) >= 1 and all(float(v) > 0 for v in reg.losses)
    assert any(isinstance(layer, keras.layers.Dropout) for layer in reg.layers)
    assert not any(isinstance(layer, keras.layers.Dropout) and layer.rate > 0 for layer in plain.layers)


@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_cnn_global_pooling_and_bn_momentum(name):
    shape = (12, 16, 12, 1)
    model = build_model(name, shape, 3, {"filters": 4, "pooling": "avgmax", "bn_momentum": 0.8})
    assert {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)} == {0.8}
    pooled = model.get_layer("gap_gmp")
    features = keras.Model(model.inputs, [model.get_layer("gap").input, pooled.output])  # feature map, pooled
    x = np.random.default_rng(1).normal(size=(2, *shape)).astype("float32")
    fmap, vec = (np.asarray(v) for v in features(x, training=False))
    c = fmap.shape[-1]
    assert vec.shape == (2, 2 * c)
    np.testing.assert_allclose(vec[:, :c], fmap.mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vec[:, c:], fmap.max(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    for pooling, layer in (("avg", "gap"), ("max", "gmp")):
        single = build_model(name, shape, 3, {"filters": 4, "pooling": pooling})
        assert single.get_layer(layer).output.shape[-1] == c
        assert not any(isinstance(v, keras.layers.Concatenate) for v in single.layers)
    with pytest.raises(ValueError, match="pooling must be one of"):
        build_model(name, shape, 3, {"pooling": "sum"})
