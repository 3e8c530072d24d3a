"""One inference path: what evaluate scores is what `medflow predict` on the exported bundle gives.

For each family a tiny pipeline runs through export; then `medflow predict` runs the bundle on the
raw test inputs, and its outputs must equal evaluate's (label maps voxel for voxel, classifier
probabilities to the printed precision, reconstructions to the same PSNR). The bundles hold only
the formats these tests read; every runtime's parity is tests/pipelines/stages/test_export.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medflow.cli.main import main
from medflow.core.loading import load_config
from medflow.core.runner import run_pipeline
from medflow.data.ct.ellipses import load_split
from medflow.models.metrics import image_quality
from medflow.tracking.runs import MlflowTracker
from tests.helpers import make_cls_dataset, make_msd, read_splits, write_pipeline

SEG = """
loader: {mode: 2d, patch_size: [16, 16], slice_axis: 2, samples_per_case: 4, batch_size: 4}
augment: {seed: 1, transforms: [{name: flip, p: 0.5}]}
model: {name: unet2d, params: {depth: 2, filters: 4}}
train: {epochs: 1, learning_rate: 0.01, monitor: val_dice, val_samples_per_case: 1, preview_cases: 1}
evaluate: {overlap: 0.25, batch_size: 16, hd95: false, mirror_axes: [0]}
export: {formats: [keras, onnx]}
"""
# Random crops smaller than the volume: the crops must be the same in evaluate and in predict.
CLS = """
preprocess: {spacing: [2.0, 2.0, 3.0], crop_to_foreground: false}
loader: {mode: 3d, patch_size: [6, 6, 4], crop: random, samples_per_case: 2, batch_size: 4}
augment: {seed: 3, transforms: []}
model: {name: logistic, params: {downsample: 1, l2: 0.0}}
train: {epochs: 1, learning_rate: 0.05, monitor: val_accuracy, preview_cases: 1, val_samples_per_case: 3}
evaluate: {split: val}
export: {formats: [keras]}
"""
RECON = """
name: recon_parity
stages: [simulate, train_recon, evaluate_recon, export_recon]
simulate: {size: 32, angles: 12, train: 16, validation: 8, test: 4, chunk: 8}
loader: {batch_size: 8}
model: {name: fbpconvnet, params: {depth: 2, filters: 4}}
train: {epochs: 1, learning_rate: 0.001, monitor: val_loss}
evaluate: {fbp_filters: [ramp], fbp_tune: false, figure_cases: 2, batch_size: 4, tv: false}
export: {formats: [keras]}
workers: 1
"""
STAGES = "[ingest, preprocess, split, train, evaluate, export]"


def _run(tmp: Path, path: Path, overrides=()) -> dict:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDFLOW_WORKSPACE", str(tmp / "workspace"))
        results, _ = run_pipeline(load_config(path, list(overrides)), tracker=MlflowTracker(f"sqlite:///{tmp / 's.db'}"))
    return {r.name: Path(r.path) for r in results}


def _predict(bundle: Path, inputs: Path, out: Path, runtime: str = "keras") -> None:
    assert main(["predict", "--model", str(bundle), "--input", str(inputs), "--output", str(out),
                 "--runtime", runtime]) == 0


def test_segmentation_labels_are_the_exported_models(tmp_path):
    root = make_msd(tmp_path / "msd", n=6)
    stages = _run(tmp_path, write_pipeline(tmp_path / "p.yaml", root, stages=STAGES, extra=SEG),
                  ["split.test_fraction=0.34"])
    test_ids = read_splits(tmp_path)["test"]
    assert test_ids
    inputs = tmp_path / "in"
    inputs.mkdir()
    for c in test_ids:
        (inputs / f"{c}.nii.gz").symlink_to(root / "imagesTr" / f"{c}.nii.gz")
    for runtime in ("keras", "onnx"):
        _predict(stages["export"], inputs, tmp_path / runtime, runtime)
        for c in test_ids:
            evaluated = np.asarray(nib.load(str(stages["evaluate"] / "predictions" / f"{c}.nii.gz")).dataobj)
            predicted = np.asarray(nib.load(str(tmp_path / runtime / f"{c}.nii.gz")).dataobj)
            assert predicted.shape == evaluated.shape
            mismatch = float(np.mean(predicted != evaluated))
            assert mismatch == 0.0 if runtime == "keras" else mismatch < 1e-3, (runtime, c, mismatch)
    plan = json.loads((stages["export"] / "plan.json").read_text())
    assert plan["inference"]["mirror_axes"] == [0] and plan["inference"]["overlap"] == 0.25  # evaluate's own


def test_classifier_with_random_crops_gives_evaluates_probabilities(tmp_path):
    root = make_cls_dataset(tmp_path / "cls", n=12)
    stages = _run(tmp_path, write_pipeline(tmp_path / "p.yaml", root, layout="csv", stages=STAGES, extra=CLS))
    plan = json.loads((stages["train"] / "plan.json").read_text())
    assert plan["window"]["crop"] == "random" and plan["inference"]["samples"] == 3
    rows = {r["case_id"]: r for r in csv.DictReader((stages["evaluate"] / "val" / "predictions.csv").open())}
    inputs = tmp_path / "in"
    inputs.mkdir()
    ingest = json.loads((stages["ingest"] / "manifest.json").read_text())["cases"]
    for case_id in rows:
        record = json.loads((stages["ingest"] / ingest[case_id]["file"]).read_text())
        (inputs / f"{case_id}.nii.gz").symlink_to(record["images"][0])
    _predict(stages["export"], inputs, tmp_path / "out")
    predicted = {r["case"]: r for r in csv.DictReader((tmp_path / "out" / "predictions.csv").open())}
    assert set(predicted) == set(rows)
    classes = json.loads((stages["export"] / "plan.json").read_text())["classes"]
    for case_id, row in rows.items():
        for c in classes:
            assert abs(float(predicted[case_id][f"p_{c}"]) - float(row[f"p_{c}"])) < 2e-6, (case_id, c)
        assert predicted[case_id]["class"] == row["predicted_class"]


def test_reconstruction_scores_are_the_exported_models(tmp_path):
    (tmp_path / "p.yaml").write_text(RECON)
    stages = _run(tmp_path, tmp_path / "p.yaml")
    sim = json.loads((stages["simulate"] / "manifest.json").read_text())
    test = load_split(stages["simulate"] / sim["data"], "test")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, sino in zip(test["index"], test["sinogram"]):
        np.save(inputs / f"img{int(i):03d}.npy", sino)
    _predict(stages["export_recon"], inputs, tmp_path / "out")
    scored = {int(r["image"]): float(r["psnr"]) for r in csv.DictReader((stages["evaluate_recon"] / "metrics.csv").open())
              if r["method"] == "network"}
    for i, truth in zip(test["index"], test["gt"]):
        image = np.load(tmp_path / "out" / f"img{int(i):03d}.npy")
        assert abs(image_quality(truth, image)["psnr"] - scored[int(i)]) < 1e-3, int(i)
