"""Learned primal-dual through the reconstruction pipeline on tiny phantoms: it trains on sinograms, its
exported model is the network itself, and predict answers alike on Keras, SavedModel and ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import mlflow
from medflow.cli.main import main
from medflow.core.engine import StageFailed
from medflow.core.loading import load_config
from medflow.core.runner import run_pipeline
from medflow.data.ct.ellipses import load_split
from medflow.tracking.runs import MlflowTracker
from tests.helpers import tracked_pipeline_run
from tests.pipelines.stages.test_reconstruction import _ct_folder

PIPELINE = """
name: lpd_test
stages: [simulate, train_recon, evaluate_recon, export_recon]
simulate: {size: 24, angles: 8, train: 16, validation: 4, test: 4, chunk: 8}
loader: {batch_size: 4}
model: {name: lpd, params: {iterations: 2, width: 8}}
train: {epochs: 2, learning_rate: 0.001, beta_2: 0.99, clip_norm: 1.0}
evaluate: {fbp_filters: [hann], figure_cases: 2, batch_size: 4, tv: false}
workers: 1
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    yield from tracked_pipeline_run(tmp_path_factory.mktemp("lpd"), PIPELINE)


def test_lpd_trains_on_sinograms_and_exports_itself(finished):
    res = finished["results"]
    assert [r.state for r in res.values()] == ["ran"] * 4
    train = Path(res["train_recon"].path)
    info = json.loads((train / "train.json").read_text())
    assert info["consumes"] == "sinogram" and info["input_shape"] == [34, 8]
    model = keras.saving.load_model(train / "model.keras", safe_mode=True)
    exported = keras.saving.load_model(train / "reconstructor.keras", safe_mode=True)
    assert model.input_shape == exported.input_shape == (None, 34, 8)
    assert {"forward", "adjoint"} <= {layer.name for layer in exported.layers}
    sino = load_split(Path(res["simulate"].path) / "data", "test")["sinogram"]
    assert np.array_equal(model.predict(sino, verbose=0), exported.predict(sino, verbose=0))
    summary = json.loads((Path(res["evaluate_recon"].path) / "summary.json").read_text())
    assert set(summary["methods"]) == {"fbp_hann", "network"}
    card = (Path(res["export_recon"].path) / "MODEL_CARD.md").read_text()
    assert "forward operator and its adjoint for this geometry are inside the model graph" in card
    assert "FBP with the" not in card


def test_lpd_answers_predict_and_serve_on_every_runtime(finished, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFLOW_WORKSPACE", str(finished["tmp"] / "workspace"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", finished["store"])
    test = load_split(Path(finished["results"]["simulate"].path) / "data", "test")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        np.save(inputs / f"scan_{i}.npy", test["sinogram"][i])
    full = keras.saving.load_model(Path(finished["results"]["train_recon"].path) / "reconstructor.keras")
    expected = np.asarray(full.predict(test["sinogram"][:2], verbose=0))[..., 0]
    for runtime in ("keras", "onnx", "saved_model"):
        out = tmp_path / runtime
        assert main(["predict", "--model", "models:/lpd_test@champion", "--input", str(inputs),
                     "--output", str(out), "--runtime", runtime]) == 0
        for i in range(2):
            assert np.abs(np.load(out / f"scan_{i}.npy") - expected[i]).max() < 1e-4, runtime
    served = mlflow.pyfunc.load_model("models:/lpd_test@champion").predict(
        pd.DataFrame({"sinogram": [test["sinogram"][0].tolist()], "case": ["first"]}))
    assert served["error"][0] == "" and np.abs(np.array(served["image"][0]) - expected[0]).max() < 1e-4


def test_lpd_refuses_dihedral_augmentation(finished, monkeypatch):
    monkeypatch.setenv("MEDFLOW_WORKSPACE", str(finished["tmp"] / "workspace"))
    cfg = finished["cfg"]
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"dihedral_augment": True})})
    with pytest.raises(StageFailed, match="dihedral_augment: lpd reads sinograms"):
        run_pipeline(cfg)


def test_compare_puts_fbp_tv_fbpconvnet_and_lpd_in_one_table_and_figure(finished, tmp_path, monkeypatch):
    from medflow.core.experiments import run_compare

    monkeypatch.setenv("MEDFLOW_WORKSPACE", str(finished["tmp"] / "workspace"))
    path = finished["tmp"] / "p.yaml"
    cfg = load_config(path, ["evaluate.tv=true", "evaluate.tv_tune_images=2", "evaluate.tv_iterations=50",
                             "compare.models=[{name: fbpconvnet, params: {depth: 2, filters: 4}}, "
                             "{name: lpd, params: {iterations: 2, width: 8}}]"])
    store = f"sqlite:///{tmp_path / 'store.db'}"
    cmp = run_compare(cfg, tracker=MlflowTracker(store))
    names = [r["model"] for r in cmp["rows"]]
    assert names == ["fbpconvnet", "lpd", "fbp_hann (baseline)", "tv (baseline)"]
    assert cmp["metric"] == "psnr" and cmp["best"] in ("fbpconvnet", "lpd")
    assert {"psnr", "psnr_sd", "ssim", "ssim_sd", "train_seconds"} <= set(cmp["rows"][0])
    assert cmp["rows"][1]["parameters"] == keras.saving.load_model(
        Path(finished["results"]["train_recon"].path) / "model.keras").count_params()
    client = mlflow.MlflowClient(store)
    artifacts = {a.path for a in client.list_artifacts(cmp["parent_run_id"], "comparison")}
    assert {"comparison/comparison.csv", "comparison/comparison.png", "comparison/comparison.md"} <= artifacts
    metrics = client.get_run(cmp["parent_run_id"]).data.metrics
    assert {"fbpconvnet_psnr", "lpd_psnr", "tv_psnr", "fbp_hann_psnr"} <= set(metrics)


def test_lpd_on_ct_volumes_reconstructs_in_hu_on_any_detector_count(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFLOW_WORKSPACE", str(tmp_path / "workspace"))
    root = _ct_folder(tmp_path / "ct")
    path = tmp_path / "ct.yaml"
    path.write_text(PIPELINE.replace(
        "simulate: {size: 24, angles: 8, train: 16, validation: 4, test: 4, chunk: 8}",
        f"simulate: {{source: ct_volumes, root: {root}, size: 32, pixel_mm: 2.0, angles: 16, detectors: 40, "
        f"photons: 100000}}\nsplit: {{seed: 0, val_fraction: 0.25, test_fraction: 0.25}}").replace(
        "loader: {batch_size: 4}", "loader: {batch_size: 2}").replace(
        "tv: false", "tv: true, tv_tune_images: 2, tv_iterations: 100}\nexport: {formats: [keras], runtime: keras"))
    results = {r.name: r for r in run_pipeline(load_config(path))[0]}
    summary = json.loads((Path(results["evaluate_recon"].path) / "summary.json").read_text())
    assert {"tv", "network", "fbp_hann"} == set(summary["methods"])
    # TV iterates in attenuation units and reports in HU: in the wrong units it would score far below FBP.
    assert summary["methods"]["tv"]["psnr_mean"] > summary["methods"]["fbp_hann"]["psnr_mean"] - 1.0
    train = Path(results["train_recon"].path)
    model = keras.saving.load_model(train / "reconstructor.keras", safe_mode=True)
    assert model.input_shape == (None, 40, 16)
    layer = model.get_layer("reconstruction")
    assert layer.offset == -1000.0 and layer.scale == pytest.approx(1000.0 / (2.0 * 0.0192))
    test = load_split(Path(results["simulate"].path) / "data", "test")
    np.save(tmp_path / "slice.npy", test["sinogram"][0])
    assert main(["predict", "--model", str(Path(results["export_recon"].path)), "--input",
                 str(tmp_path / "slice.npy"), "--output", str(tmp_path / "out")]) == 0  # ONNX: the test above
    image = nib.load(tmp_path / "out" / "slice.nii.gz")
    assert image.header.get_zooms()[:2] == (2.0, 2.0)
    expected = model.predict(test["sinogram"][:1], verbose=0)[0, ..., 0]
    assert np.abs(image.get_fdata()[..., 0] - expected).max() < 1e-3 * np.abs(expected).max()
