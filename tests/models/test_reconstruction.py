"""FBPConvNet and its sinogram-input wrapper."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medflow.data.ct.ellipses import EllipsesSpec, make_sample
from medflow.data.ct.fbp import fbp
from medflow.models.metrics import image_quality
from medflow.models.reconstruction import sinogram_model
from medflow.models.registry import build_model


def test_fbpconvnet_starts_as_the_identity_on_its_fbp_input():
    net = build_model("fbpconvnet", (32, 32, 1), 1, {"depth": 2, "filters": 4})
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype(np.float32)
    assert net.output_shape == (None, 32, 32, 1)
    # Residual learning: the zero-initialized correction leaves the FBP image as it is.
    assert np.array_equal(np.asarray(net(x, training=False)), x)


def test_sinogram_model_runs_fbp_then_the_network_and_round_trips(tmp_path):
    spec = EllipsesSpec(size=32, angles=12)
    sino, stored_fbp, _ = make_sample(spec, "test", 0)
    net = build_model("fbpconvnet", (32, 32, 1), 1, {"depth": 2, "filters": 4})
    # Make the correction non-zero so the test sees the network, not only the FBP.
    kernel, bias = net.get_layer("correction").get_weights()
    net.get_layer("correction").set_weights([np.full_like(kernel, 0.01), bias])
    model = sinogram_model(net, spec.geometry())
    assert model.input_shape == (None, 46, 12)
    out = np.asarray(model.predict(sino[None], verbose=0))
    ref = np.asarray(net.predict(fbp(sino, spec.geometry()["angles_deg"], 32, "hann")[None, ..., None], verbose=0))
    assert np.abs(out - ref).max() < 1e-4
    assert np.abs(fbp(sino, spec.geometry()["angles_deg"], 32, "hann") - stored_fbp).max() < 1e-6
    path = tmp_path / "reconstructor.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert np.allclose(np.asarray(loaded.predict(sino[None], verbose=0)), out, atol=1e-6)


def test_image_quality_matches_scikit_image():
    rng = np.random.default_rng(0)
    truth = rng.random((40, 40))
    recon = truth + 0.05 * rng.normal(size=truth.shape)
    q = image_quality(truth, recon)
    data_range = truth.max() - truth.min()
    assert q["psnr"] == pytest.approx(peak_signal_noise_ratio(truth, recon, data_range=data_range), rel=1e-9)
    assert q["ssim"] == pytest.approx(structural_similarity(truth, recon, data_range=data_range), rel=1e-9)
    assert image_quality(truth, truth)["psnr"] == float("inf")



def test_fbpunet_is_divals_unet(tmp_path):
    """5 scales of (32, 32, 64, 64, 128) channels, 4-channel 1x1 skips, bilinear up, 1x1 out, not residual."""
    model = build_model("fbpunet", (64, 64, 1), 1, {})
    assert model.output_shape == (None, 64, 64, 1)
    assert [model.get_layer(f"down{i}_b_conv").filters for i in range(1, 5)] == [32, 64, 64, 128]
    assert all(model.get_layer(f"up{i}_skip_conv").kernel.shape[:2] == (1, 1) for i in range(1, 5))
    assert model.get_layer("up4_b_conv").filters == 32 and "correction" not in {la.name for la in model.layers}
    x = np.random.default_rng(0).random((2, 64, 64, 1)).astype(np.float32)
    model.save(tmp_path / "u.keras")
    loaded = keras.saving.load_model(tmp_path / "u.keras", safe_mode=True)
    assert np.allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="scales must be 1..6"):
        build_model("fbpunet", (64, 64, 1), 1, {"scales": 7})
