"""The reconstruction pipeline end to end on tiny phantoms: simulate -> train_recon -> evaluate_recon,
read back from MLflow, then ``medflow predict`` on sinograms with bad inputs mixed in."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import mlflow
from medflow.cli.main import main
from medflow.core.config import ConfigError
from medflow.core.loading import load_config
from medflow.core.runner import run_pipeline
from medflow.data.ct.ellipses import load_split
from medflow.data.ct.projector import operator_norm, ray_transform
from medflow.stages.train_recon import epoch_batches
from mlflow import MlflowClient
from tests.helpers import tracked_pipeline_run

PIPELINE = """
name: recon_test
stages: [simulate, train_recon, evaluate_recon, export_recon]
simulate: {size: 32, angles: 12, train: 24, validation: 8, test: 6, chunk: 8}
loader: {batch_size: 8}
model: {name: fbpconvnet, params: {depth: 2, filters: 4}}
train: {epochs: 2, learning_rate: 0.001, monitor: val_loss, dihedral_augment: true}
evaluate: {fbp_filters: [ramp, hann], figure_cases: 3, batch_size: 4, tv_iterations: 250}
workers: 1
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tracked run of the tiny pipeline (shared by the tests below: training is the slow part)."""
    yield from tracked_pipeline_run(tmp_path_factory.mktemp("recon"), PIPELINE)


def test_stages_write_scores_figure_and_models(finished):
    res = finished["results"]
    assert [r.state for r in res.values()] == ["ran"] * 4
    summary = json.loads((Path(res["evaluate_recon"].path) / "summary.json").read_text())
    methods = summary["methods"]
    assert set(methods) == {"fbp_ramp", "fbp_hann", "tv", "network"}
    assert all(m["images"] == 6 for m in methods.values())
    # The Hann window trades resolution for noise; with 12 noisy angles it must score above the bare ramp.
    assert methods["fbp_hann"]["psnr_mean"] > methods["fbp_ramp"]["psnr_mean"]
    # TV, tuned on validation and started from the FBP, beats every FBP on sparse noisy views.
    assert methods["tv"]["psnr_mean"] > max(methods["fbp_hann"]["psnr_mean"], methods["fbp_ramp"]["psnr_mean"])
    tv = summary["tv"]
    assert tv["iterations"] in (100, 250) and len(tv["tuning_grid"]) == 7 * 2  # evaluate.tv_iterations caps it
    geometry = summary["geometry"]
    matrix = ray_transform(geometry["image_size"], tuple(geometry["angles_deg"]), geometry["detectors"])
    assert tv["lambda"] == pytest.approx(tv["weight"] * operator_norm(matrix) ** 2, rel=1e-4)
    second = summary["second_simulator"]
    assert set(second["methods"]) == set(methods) - {"tv"} and second["detectors"] == 42  # round(46 / 1.1)
    for method, gap in second["gap_db"].items():
        assert gap == pytest.approx(methods[method]["psnr_mean"] - second["methods"][method]["psnr_mean"])
    # A fair second scanner: FBP scores about as well on it as on the main simulator.
    assert abs(second["gap_db"]["fbp_hann"]) < 1.5
    rows = list(csv.DictReader((Path(res["evaluate_recon"].path) / "metrics.csv").open()))
    assert len(rows) == 24 and {r["method"] for r in rows} == set(methods)
    net_psnr = np.mean([float(r["psnr"]) for r in rows if r["method"] == "network"])
    assert net_psnr == pytest.approx(methods["network"]["psnr_mean"], abs=1e-3)
    assert (Path(res["evaluate_recon"].path) / "comparison.png").stat().st_size > 10_000
    train_dir = Path(res["train_recon"].path)
    assert json.loads((train_dir / "geometry.json").read_text())["angles_deg"][0] == pytest.approx(7.5)


def test_metrics_and_figure_are_in_mlflow(finished):
    client = MlflowClient(finished["store"])
    parent = client.get_run(finished["parent"])
    assert parent.data.metrics["test_psnr"] == pytest.approx(
        json.loads((Path(finished["results"]["evaluate_recon"].path) / "summary.json").read_text())
        ["methods"]["network"]["psnr_mean"])
    assert {"test_ssim", "test_psnr_fbp_ramp", "test_psnr_fbp_hann", "test_psnr_tv",
            "test_psnr_second_simulator"} <= set(parent.data.metrics)
    exp = parent.info.experiment_id
    (evaluate,) = client.search_runs([exp], "tags.`medflow.stage` = 'evaluate_recon'")
    assert {"stage/comparison.png", "stage/metrics.csv", "stage/summary.json"} <= {
        a.path for a in client.list_artifacts(evaluate.info.run_id, "stage")}
    (train,) = client.search_runs([exp], "tags.`medflow.stage` = 'train_recon'")
    history = client.get_metric_history(train.info.run_id, "val_loss")
    assert [m.step for m in history] == [0, 1]


def test_rerun_skips_every_stage(finished, monkeypatch):
    monkeypatch.setenv("MEDFLOW_WORKSPACE", str(finished["tmp"] / "workspace"))
    results, _ = run_pipeline(finished["cfg"])
    assert [r.state for r in results] == ["skipped"] * 4


def test_predict_writes_images_and_quarantines_bad_inputs(finished, tmp_path, capsys):
    sim = Path(finished["results"]["simulate"].path)
    test = load_split(sim / "data", "test")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        np.save(inputs / f"scan_{i}.npy", test["sinogram"][i])
    np.save(inputs / "wrong_shape.npy", np.zeros((10, 12), np.float32))
    (inputs / "garbage.npy").write_bytes(b"not numpy")
    out = tmp_path / "out"
    code = main(["predict", "--model", finished["results"]["train_recon"].path, "--input", str(inputs),
                 "--output", str(out), "--batch", "3"])
    assert code == 1  # some inputs were quarantined
    err = capsys.readouterr().err
    assert "wrong_shape.npy: sinogram shape (10, 12), the model expects (46, 12)" in err
    assert "garbage.npy: not a readable .npy array" in err
    assert sorted(p.name for p in out.iterdir()) == [
        "quarantine.json", "scan_0.nii.gz", "scan_0.npy", "scan_1.nii.gz", "scan_1.npy"]
    assert len(json.loads((out / "quarantine.json").read_text())) == 2
    net = keras.saving.load_model(Path(finished["results"]["train_recon"].path) / "model.keras", safe_mode=True)
    expected = np.asarray(net.predict(test["fbp"][:2, ..., None], verbose=0))[..., 0]
    for i in range(2):
        image = np.load(out / f"scan_{i}.npy")
        assert image.shape == (32, 32) and np.abs(image - expected[i]).max() < 1e-4
        assert np.allclose(nib.load(out / f"scan_{i}.nii.gz").get_fdata()[..., 0], image, atol=1e-6)
    assert main(["predict", "--model", str(tmp_path / "none.keras"), "--input", str(inputs),
                 "--output", str(out)]) == 2


def test_registered_export_reconstructs_on_every_runtime(finished, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFLOW_WORKSPACE", str(finished["tmp"] / "workspace"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", finished["store"])
    bundle = Path(finished["results"]["export_recon"].path)
    plan = json.loads((bundle / "plan.json").read_text())
    assert plan["family"] == "reconstruction" and plan["input_shape"] == [46, 12]
    assert plan["geometry"]["angles_deg"][0] == pytest.approx(7.5)
    assert "| test_psnr | test |" in (bundle / "MODEL_CARD.md").read_text()
    test = load_split(Path(finished["results"]["simulate"].path) / "data", "test")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        np.save(inputs / f"scan_{i}.npy", test["sinogram"][i])
    full = keras.saving.load_model(Path(finished["results"]["train_recon"].path) / "reconstructor.keras")
    expected = np.asarray(full.predict(test["sinogram"][:3], verbose=0))[..., 0]
    for runtime in ("onnx", "saved_model"):
        out = tmp_path / runtime
        assert main(["predict", "--model", "models:/recon_test@champion", "--input", str(inputs),
                     "--output", str(out), "--runtime", runtime]) == 0
        for i in range(3):
            assert np.abs(np.load(out / f"scan_{i}.npy") - expected[i]).max() < 1e-4
    served = mlflow.pyfunc.load_model("models:/recon_test@champion").predict(
        pd.DataFrame({"sinogram": [test["sinogram"][0].tolist()], "case": ["first"]}))
    assert served["error"][0] == "" and np.abs(np.array(served["image"][0]) - expected[0]).max() < 1e-4


def test_epoch_order_is_a_seeded_permutation_per_epoch():
    a = list(epoch_batches(10, 4, seed=0, epochs=range(2)))
    assert len(a) == 4 and all(len(b) == 4 for b in a)
    assert len(set(np.concatenate(a[:2]))) == 8  # no repeats inside an epoch
    assert not np.array_equal(a[0], a[2])
    resumed = list(epoch_batches(10, 4, seed=0, epochs=range(1, 2)))
    assert all(np.array_equal(x, y) for x, y in zip(resumed, a[2:]))


def test_config_checks(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.replace("chunk: 8}", "chunk: 8, oversample: 2}"))
    with pytest.raises(ConfigError, match="simulate.oversample: oversample must be odd"):
        load_config(path)
    path.write_text(PIPELINE.replace("stages: [simulate,", "stages: [ingest, simulate,"))
    with pytest.raises(ConfigError, match="dataset: required"):
        load_config(path)


def test_fbp_tuning_cuts_more_of_the_band_when_the_data_are_noisier():
    from medflow.data.ct.ellipses import EllipsesSpec, make_sample
    from medflow.tasks.evaluation.reconstruction import tune_scaling

    picks = {}
    for noise in (0.0, 0.1):
        spec = EllipsesSpec(size=32, angles=24, noise=noise)
        samples = [make_sample(spec, "validation", i) for i in range(8)]
        picks[noise] = tune_scaling([s[0] for s in samples], [s[2] for s in samples], spec.geometry(), "ramp")
    assert picks[0.1] < picks[0.0]


def _ct_folder(root: Path, n: int = 4) -> Path:
    """``n`` small CT volumes in HU (water cylinders with a bone rod at varying places) and one broken file."""
    from medflow.data.nifti import write_nifti

    root.mkdir()
    x = (np.arange(40) - 19.5) * 1.5
    xx, yy = np.meshgrid(x, x, indexing="ij")
    for i in range(n):
        slab = np.where(np.hypot(xx, yy) < 24, 0.0, -1000.0)
        slab[np.hypot(xx - 8 * np.cos(i), yy - 8 * np.sin(i)) < 4] = 900.0
        affine = np.diag([1.5, 1.5, 4.0, 1.0])
        write_nifti(root / f"ct_{i}.nii.gz", np.repeat(slab[:, :, None], 3, axis=2).astype(np.float32), affine)
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8bbroken")
    return root


def test_ct_volume_source_trains_and_exports_in_hu(tmp_path, monkeypatch, capsys):
    root = _ct_folder(tmp_path / "ct")
    path = tmp_path / "ct.yaml"
    path.write_text(PIPELINE.replace(
        "simulate: {size: 32, angles: 12, train: 24, validation: 8, test: 6, chunk: 8}",
        f"simulate: {{source: ct_volumes, root: {root}, size: 32, pixel_mm: 2.0, angles: 16, detectors: 40, "
        f"photons: 100000}}\nsplit: {{seed: 0, val_fraction: 0.25, test_fraction: 0.25}}").replace(
        "loader: {batch_size: 8}", "loader: {batch_size: 2}").replace("tv_iterations: 250", "tv: false"))
    results = {r.name: r for r in run_pipeline(load_config(path))[0]}  # TV on HU: test_lpd.py
    assert "broken.nii.gz" in capsys.readouterr().err  # quarantined in one line; the others carry on
    sim = Path(results["simulate"].path)
    manifest = json.loads((sim / "data" / "dataset.json").read_text())
    assert manifest["counts"] == {"train": 6, "validation": 3, "test": 3}  # 3 slices per volume
    assert [q["path"].endswith("broken.nii.gz") for q in manifest["quarantine"]] == [True]
    test = load_split(sim / "data", "test")
    assert test["sinogram"].shape == (3, 40, 16)
    assert test["gt"].max() == 900.0 and test["gt"].min() == -1000.0  # truth in HU
    # The exported model (FBP layer with the rebinning and the HU scale, then the network) agrees with
    # the network on the stored FBP input, so inference sees exactly what training saw.
    train_dir = Path(results["train_recon"].path)
    net = keras.saving.load_model(train_dir / "model.keras", safe_mode=True)
    full = keras.saving.load_model(train_dir / "reconstructor.keras", safe_mode=True)
    a = np.asarray(full.predict(test["sinogram"], verbose=0))
    b = np.asarray(net.predict(test["fbp"][..., None], verbose=0))
    assert np.abs(a - b).max() < 1e-3 * np.abs(b).max()
    water = test["gt"][0] == 0.0
    assert abs(np.median(test["fbp"][0][water])) < 60.0  # the FBP input is in HU too
    # Exported runtimes agree relative to the HU scale; predicted NIfTI carry the 2 mm pixels.
    bundle = Path(results["export_recon"].path)
    parity = json.loads((bundle / "parity.json").read_text())
    assert parity["scale"] > 100 and max(parity["max_abs_diff"].values()) <= parity["allowed"]
    np.save(tmp_path / "slice.npy", test["sinogram"][0])
    assert main(["predict", "--model", str(bundle), "--input", str(tmp_path / "slice.npy"),
                 "--output", str(tmp_path / "out"), "--runtime", "onnx"]) == 0
    assert nib.load(tmp_path / "out" / "slice.nii.gz").header.get_zooms()[:2] == (2.0, 2.0)


def test_dihedral_pairs_are_measurements_of_the_turned_object():
    from medflow.data.ct.phantoms import draw_ellipses, phantom
    from medflow.data.ct.physics import fbp, forward, midpoint_angles
    from medflow.stages.train_recon import dihedral, dihedral_draw

    angles = midpoint_angles(30)
    truth, _ = phantom(draw_ellipses(np.random.default_rng(3)), 64)
    recon = fbp(forward(truth, angles), angles, 64, "hann")
    fbp_error = np.abs(recon - truth).mean()
    for element in range(8):
        turned = fbp(forward(dihedral(truth, element), angles), angles, 64, "hann")
        assert np.abs(dihedral(recon, element) - turned).mean() < 0.2 * fbp_error
    assert np.array_equal(dihedral(truth, 5), truth.T)  # a quarter turn then a flip is the transpose
    draws = dihedral_draw(0, 3, 7, 64)
    assert np.array_equal(draws, dihedral_draw(0, 3, 7, 64)) and set(draws) == set(range(8))


def test_measurement_augmentation_remeasures_each_batch_reproducibly(finished):
    from medflow.stages.train_recon import remeasurer

    sim = Path(finished["results"]["simulate"].path)
    train = load_split(sim / "data", "train")
    geometry = json.loads((sim / "geometry.json").read_text())
    cfg = finished["cfg"]
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"measurement_augment": True})})
    remeasure = remeasurer(cfg, train["sinogram"], geometry, "fbp")
    idx = np.array([3, 0, 5])
    a, b, c = remeasure(idx, 0, 1), remeasure(idx, 0, 1), remeasure(idx, 1, 1)
    assert a.shape == (3, 32, 32) and np.array_equal(a, b) and not np.array_equal(a, c)
    # Close to the stored FBP inputs (the same object, re-measured), never equal to them.
    err = np.abs(a - train["fbp"][idx]).mean() / np.abs(train["fbp"][idx]).mean()
    assert 0.0 < err < 0.5
    sinograms = remeasurer(cfg, train["sinogram"], geometry, "sinogram")(idx, 0, 1)
    assert sinograms.shape == (3, 46, 12)


def test_measurement_augmented_training_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFLOW_WORKSPACE", str(tmp_path / "workspace"))
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.replace("dihedral_augment: true}", "dihedral_augment: true, measurement_augment: true}")
                    .replace("stages: [simulate, train_recon, evaluate_recon, export_recon]",
                             "stages: [simulate, train_recon]"))
    results = run_pipeline(load_config(path))[0]
    assert [r.state for r in results] == ["ran", "ran"]
    history = list(csv.DictReader((Path(results[1].path) / "history.csv").open()))
    assert len(history) == 2 and all(np.isfinite(float(h["val_psnr"])) for h in history)
