"""Learned primal-dual (models/lpd.py): DIVal's architecture, geometry checks, serialization."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medflow.data.ct.ellipses import EllipsesSpec
from medflow.models.registry import build_model

GEOMETRY = EllipsesSpec(size=24, angles=8).geometry()  # 34 detectors


def test_shapes_and_dival_block_layout():
    model = build_model("lpd", (34, 8), 1, {"geometry": GEOMETRY, "iterations": 3})
    assert model.input_shape == (None, 34, 8) and model.output_shape == (None, 24, 24, 1)
    names = {layer.name for layer in model.layers}
    assert {"dual_2_conv0", "dual_2_prelu1", "dual_2_out", "primal_2_out"} <= names and "dual_3_out" not in names
    assert model.get_layer("dual_0_conv0").kernel.shape == (3, 3, 5 + 1 + 1, 32)  # dual memory, A primal[1], y
    assert model.get_layer("primal_0_conv0").kernel.shape == (3, 3, 5 + 1, 32)  # primal memory, A^T dual[0]
    assert model.get_layer("primal_0_out").kernel.shape == (3, 3, 32, 5)
    assert np.all(model.get_layer("dual_0_prelu0").get_weights()[0] == 0)  # PReLU starts as ReLU


def test_round_trip_with_safe_mode(tmp_path):
    model = build_model("lpd", (34, 8), 1, {"geometry": GEOMETRY, "iterations": 2, "width": 8})
    x = np.random.default_rng(0).random((2, 34, 8)).astype(np.float32)
    model.save(tmp_path / "lpd.keras")
    loaded = keras.saving.load_model(tmp_path / "lpd.keras", safe_mode=True)
    assert np.array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_geometry_is_required_and_checked():
    with pytest.raises(ValueError, match="lpd needs the acquisition geometry"):
        build_model("lpd", (34, 8), 1, {})
    with pytest.raises(ValueError, match=r"lpd: input \(30, 8\), the geometry has \(34, 8\)"):
        build_model("lpd", (30, 8), 1, {"geometry": GEOMETRY})


def test_opnorm_normalizes_the_operator():
    from medflow.data.ct.projector import operator_norm, ray_transform

    model = build_model("lpd", (34, 8), 1, {"geometry": GEOMETRY, "iterations": 1})
    norm = operator_norm(ray_transform(24, tuple(GEOMETRY["angles_deg"]), 34))
    assert model.get_layer("forward").scale == pytest.approx(1.0 / norm)
    assert model.get_layer("normalize").scale == pytest.approx(1.0 / norm)
