"""Export parity: the SavedModel and the ONNX model (through onnxruntime) match Keras within 1e-4."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.data.ct.ellipses import EllipsesSpec
from medflow.models.reconstruction import sinogram_model
from medflow.models.registry import build_model
from medflow.models.runtimes import KERAS, ONNX, SAVED_MODEL, export_formats, load_runtime, parity

BUILDERS = [
    ("unet2d", (24, 24, 2), 3, {"depth": 2, "filters": 4}),
    ("unet3d", (12, 12, 12, 1), 3, {"depth": 2, "filters": 4, "norm": "group"}),
    ("cnn", (16, 16, 16, 1), 3, {"filters": 4, "blocks": 2}),
    ("resnet", (16, 16, 16, 1), 2, {"filters": 4, "stages": [1, 1]}),
    ("mlp", (8, 8, 8, 1), 2, {"downsample": 2, "units": [8]}),
    ("cnn-topk", (16, 16, 16, 1), 3, {"filters": 4, "blocks": 2, "pooling": "topk", "topk_fraction": 0.1}),
    ("resnet-lse", (16, 16, 16, 1), 2, {"filters": 4, "stages": [1, 1], "pooling": "lse"}),
]


def _randomize(model, seed=0):
    """Non-trivial weights everywhere (zero-initialized layers would hide a wrong export)."""
    rng = np.random.default_rng(seed)
    # Kernels ~ N(0, 0.3); vectors (biases, norm scales, moving variances) positive, so no NaN.
    model.set_weights([(rng.normal(0, 0.3, w.shape) if w.ndim > 1 else rng.uniform(0.5, 1.5, w.shape)).astype(w.dtype)
                       for w in model.get_weights()])
    return model


@pytest.mark.parametrize("name,shape,classes,params", BUILDERS, ids=[b[0] for b in BUILDERS])
def test_saved_model_and_onnx_match_keras(tmp_path, name, shape, classes, params):
    model = _randomize(build_model(name.split("-")[0], shape, classes, params))
    written = export_formats(model, tmp_path)
    assert written == {"keras": KERAS, "saved_model": SAVED_MODEL, "onnx": ONNX}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    x = np.random.default_rng(1).normal(size=(3, *shape)).astype(np.float32)
    check = parity(tmp_path, x)
    drift = check["max_abs_diff"]
    assert set(drift) == {"saved_model", "onnx"} and max(drift.values()) < 1e-4, drift
    # every runtime gives the Keras model's own answer, not merely each other's
    expected = np.asarray(model.predict(x, verbose=0))
    for runtime in ("keras", "saved_model", "onnx"):
        assert np.abs(load_runtime(tmp_path, runtime)(x) - expected).max() < 1e-4


def test_onnx_alone_from_a_model_loaded_and_never_called(tmp_path):
    """export.formats [keras, onnx]: no SavedModel export calls the model first, which Keras's ONNX export needs
    unless it is given the signature."""
    from medflow.models.runtimes import load_keras

    model = _randomize(build_model("unet2d", (24, 24, 2), 3, {"depth": 2, "filters": 4}))
    model.save(tmp_path / "m.keras")
    loaded = load_keras(tmp_path / "m.keras")
    assert export_formats(loaded, tmp_path / "out", ("keras", "onnx")) == {"keras": KERAS, "onnx": ONNX}
    x = np.random.default_rng(1).normal(size=(2, 24, 24, 2)).astype(np.float32)
    assert parity(tmp_path / "out", x, ("onnx",))["max_abs_diff"]["onnx"] < 1e-4


def test_sinogram_model_with_the_fbp_layer_exports(tmp_path):
    spec = EllipsesSpec(size=32, angles=12)
    net = _randomize(build_model("fbpconvnet", (32, 32, 1), 1, {"depth": 2, "filters": 4}))
    model = sinogram_model(net, spec.geometry())
    export_formats(model, tmp_path)
    x = np.abs(np.random.default_rng(2).normal(size=(2, *model.input_shape[1:]))).astype(np.float32) * 5
    check = parity(tmp_path, x)
    assert check["scale"] == pytest.approx(max(1.0, np.abs(np.asarray(model.predict(x, verbose=0))).max()))
    assert max(check["max_abs_diff"].values()) < 1e-4 * check["scale"], check


def test_missing_runtime_and_unknown_names_are_one_line_errors(tmp_path):
    export_formats(build_model("mlp", (8, 8, 8, 1), 2, {"downsample": 2, "units": [4]}), tmp_path, ("keras",))
    with pytest.raises(FileNotFoundError, match="no model.onnx for the onnx runtime"):
        load_runtime(tmp_path, "onnx")
    with pytest.raises(ValueError, match="unknown runtime 'tflite'"):
        load_runtime(tmp_path, "tflite")
    with pytest.raises(ValueError, match="unknown export format"):
        export_formats(build_model("mlp", (8, 8, 8, 1), 2, {"downsample": 2, "units": [4]}), tmp_path, ("pt",))
