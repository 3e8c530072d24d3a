"""The model card: built from the bundle's plan, each family filling in its own part."""

from __future__ import annotations

from medflow.core.config import ExportConfig
from medflow.inference.model_card import model_card
from tests.pipelines.inference.test_plan import LEGACY


class _Cfg:
    export = ExportConfig(intended_use="Research only.", limitations=["Adults only."])


def _plan(**more):
    return {**LEGACY, "model": {"name": "unet2d", "params": {}}, "formats": ["keras", "onnx"],
            "registered_model": "seg", "data": {"source": "/ws/sample/demo", "train_cases": 7}, **more}


def test_volume_card_lists_preprocessing_metrics_and_limits():
    card = model_card(_plan(), _Cfg(), version="abc", n_params=1234, parity={"onnx": 2e-6})
    assert "- Network: `unet2d` {}, 1,234 parameters" in card
    assert "resampled to [1.0, 1.0, 1.0] mm" in card and "50% overlap, Gaussian blending" in card
    assert "| best_val_dice | val | 0.5 |" in card and "| onnx | `model.onnx` | 2e-06 |" in card
    assert "--input NIFTI_DIR" in card and "- Adults only." in card and "synthetic sample data" in card
    assert "Trained on 7 case(s)" in card


def test_reconstruction_card_names_the_geometry():
    g = {"angles_deg": [7.5, 37.5], "detectors": 23, "fbp_filter": "hann", "image_size": 16}
    plan = {**_plan(), "family": "reconstruction", "input_shape": [23, 2], "geometry": g, "classes": [],
            "channels": [], "data": {"source": "ellipses", "train_images": 4}}
    for key in ("preprocess", "window", "inference"):
        plan.pop(key)
    card = model_card(plan, _Cfg(), version="v", n_params=1, parity={})
    assert "a (23, 2) sinogram (detectors, angles)" in card and "a 16x16 image" in card
    assert "2 angles from 7.5 to 37.5 degrees, 23 detectors, FBP with the hann filter" in card
    assert "--input SINOGRAMS_DIR" in card and "exactly this geometry" in card
