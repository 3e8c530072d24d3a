"""Filtered back-projection: our tables against scikit-image, and the Keras layer against the tables."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from skimage.transform import iradon

from medflow.data.ct.fbp import fbp, fourier_filter
from medflow.data.ct.phantoms import render_ellipses
from medflow.data.ct.physics import forward, midpoint_angles
from medflow.models.ct_ops import FilteredBackprojection

ANGLES = midpoint_angles(30)


@pytest.fixture(scope="module")
def disc_sinogram():
    # An off-centre disc and a dimmer ellipse, so errors in geometry or sign show.
    image = render_ellipses(np.array([[1.0, 0.35, 0.35, 0.3, -0.2, 0.0], [0.5, 0.2, 0.1, -0.4, 0.3, 0.7]]), 64)
    return forward(image, ANGLES)


@pytest.mark.parametrize("name", ["ramp", "shepp-logan", "cosine"])
def test_fbp_equals_scikit_image(disc_sinogram, name):
    ours = fbp(disc_sinogram, ANGLES, 64, name)
    ref = iradon(disc_sinogram, theta=ANGLES, output_size=64, filter_name=name, circle=False)
    assert np.abs(ours - ref).max() < 1e-5 * np.abs(ref).max() + 1e-6


@pytest.mark.parametrize("name", ["hann", "hamming"])
def test_windowed_fbp_is_close_to_scikit_image(disc_sinogram, name):
    ours = fbp(disc_sinogram, ANGLES, 64, name)
    ref = iradon(disc_sinogram, theta=ANGLES, output_size=64, filter_name=name, circle=False)
    assert np.abs(ours - ref).max() < 0.01 * np.abs(ref).max()


def test_frequency_scaling_cuts_the_band_and_bad_filters_fail():
    full, half = fourier_filter(128, "hann"), fourier_filter(128, "hann", 0.5)
    freq = np.abs(np.fft.fftfreq(128))
    assert np.all(half[freq > 0.25] == 0) and np.all(full[(freq > 0) & (freq < 0.5)] > 0)
    with pytest.raises(ValueError, match="unknown FBP filter"):
        fourier_filter(64, "box")
    with pytest.raises(ValueError, match="frequency_scaling"):
        FilteredBackprojection(64, ANGLES, "hann", 1.5)


def test_layer_matches_the_tables_and_round_trips(tmp_path, disc_sinogram):
    batch = np.stack([disc_sinogram, 0.5 * disc_sinogram[::-1]]).astype(np.float32)
    inputs = keras.Input(batch.shape[1:])
    model = keras.Model(inputs, FilteredBackprojection(64, ANGLES, "hann", 0.8, name="fbp")(inputs))
    out = np.asarray(model.predict(batch, verbose=0))
    assert out.shape == (2, 64, 64, 1)
    for i in range(2):
        ref = fbp(batch[i], ANGLES, 64, "hann", 0.8)
        assert np.abs(out[i, ..., 0] - ref).max() < 1e-4 * np.abs(ref).max()
    path = tmp_path / "fbp.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert loaded.get_layer("fbp").get_config()["frequency_scaling"] == 0.8
    assert np.allclose(loaded.predict(batch, verbose=0), out, atol=1e-6)
    with pytest.raises(ValueError, match="angles"):
        FilteredBackprojection(64, ANGLES[:10])(keras.Input(batch.shape[1:]))


def test_layer_rebins_other_detector_counts_and_maps_to_output_units():
    from medflow.data.ct.physics import fbp_geometry

    geometry = {"image_size": 32, "angles_deg": midpoint_angles(16).tolist(), "fbp_filter": "hann",
                "frequency_scaling": 1.0, "fbp_scale": 2000.0, "fbp_offset": -1000.0}
    sino = np.abs(np.random.default_rng(0).normal(size=(40, 16))).astype(np.float32)  # 40, not 46, detectors
    inputs = keras.Input(sino.shape)
    layer = FilteredBackprojection(32, geometry["angles_deg"], "hann", 1.0, 2000.0, -1000.0)
    out = np.asarray(keras.Model(inputs, layer(inputs)).predict(sino[None], verbose=0))[0, ..., 0]
    ref = fbp_geometry(sino, geometry)
    assert np.abs(out - ref).max() < 1e-4 * np.abs(ref).max()
