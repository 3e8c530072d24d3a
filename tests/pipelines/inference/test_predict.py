"""`medflow predict`'s model and input resolution, and its per-file quarantine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medflow.data.ct.ellipses import EllipsesSpec
from medflow.inference.bundle import BundleError
from medflow.inference.plan import InferencePlan
from medflow.inference.predict import PredictError, list_inputs, open_model, predict_files
from medflow.models.reconstruction import sinogram_model
from medflow.models.registry import build_model


@pytest.fixture(scope="module")
def train_folder(tmp_path_factory):
    """A folder shaped like a train_recon stage's: the reconstructor, its plan, a manifest naming it."""
    folder = tmp_path_factory.mktemp("train")
    spec = EllipsesSpec(size=16, angles=6)
    model = sinogram_model(build_model("fbpconvnet", (16, 16, 1), 1, {"depth": 1, "filters": 2}), spec.geometry())
    model.save(folder / "reconstructor.keras")
    InferencePlan("reconstruction", tuple(model.input_shape[1:]), geometry=spec.geometry()).save(folder)
    (folder / "manifest.json").write_text(json.dumps({"inference_model": "reconstructor.keras"}))
    return folder


def test_a_train_folder_is_a_model_on_keras(train_folder, tmp_path):
    bundle = open_model(str(train_folder))
    assert bundle.family == "reconstruction" and bundle.runtime == "keras"
    assert open_model(str(train_folder / "reconstructor.keras")).plan == bundle.plan
    with pytest.raises(PredictError, match="keras runtime only"):
        open_model(str(train_folder), "onnx")
    inputs = tmp_path / "in"
    inputs.mkdir()
    shape = bundle.plan.input_shape
    np.save(inputs / "a.npy", np.ones(shape, np.float32))
    np.save(inputs / "b.npy", np.ones((2, 2), np.float32))
    (inputs / "notes.txt").write_text("not an input")
    files = list_inputs(inputs, bundle)
    assert [f.name for f in files] == ["a.npy", "b.npy"]
    report = predict_files(bundle, files, tmp_path / "out")
    assert report["written"] == ["a"] and report["quarantine"][0]["path"].endswith("b.npy")
    assert "sinogram shape (2, 2)" in report["quarantine"][0]["problem"]
    assert json.loads((tmp_path / "out" / "quarantine.json").read_text()) == report["quarantine"]
    assert np.load(tmp_path / "out" / "a.npy").shape == (16, 16)


def test_models_that_are_not_there_are_one_line_errors(tmp_path):
    with pytest.raises(PredictError, match="no such model"):
        open_model(str(tmp_path / "missing"))
    (tmp_path / "m.keras").write_text("x")
    with pytest.raises(PredictError, match="no plan.json beside it"):
        open_model(str(tmp_path / "m.keras"))
    (tmp_path / "plan.json").write_text(json.dumps({"family": "detection"}))
    with pytest.raises(BundleError, match="unknown model family 'detection'"):
        open_model(str(tmp_path))


def test_an_input_folder_without_inputs(train_folder, tmp_path):
    with pytest.raises(PredictError, match="no .npy files"):
        list_inputs(tmp_path, open_model(str(train_folder)))
