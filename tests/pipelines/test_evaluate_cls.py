"""Evaluate stage for classifiers: val and test reports, confusion matrices and predictions, in MLflow."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from pipelines.config import load_config
from pipelines.runner import run_pipeline
from pipelines.tracking import MlflowTracker
from tests.helpers import make_cls_dataset, write_pipeline

EXTRA = """
preprocess: {spacing: [2.0, 2.0, 2.0], crop_to_foreground: false}
loader: {mode: 3d, patch_size: [8, 8, 8], crop: center, samples_per_case: 1, batch_size: 4}
augment: {seed: 1, transforms: [{name: flip, p: 0.5, axes: [0]}]}
model: {name: logistic, params: {downsample: 1, l2: 0.0}}
train: {epochs: 3, learning_rate: 0.05, monitor: val_accuracy, class_weights: balanced, preview_cases: 1}
"""


def test_classification_evaluation(tmp_path):
    from sklearn import metrics as skm

    root = make_cls_dataset(tmp_path / "cls", n=16)
    store = f"sqlite:///{tmp_path / 's.db'}"
    path = write_pipeline(tmp_path / "p.yaml", root, layout="csv", stages="[ingest, preprocess, split, train, evaluate]",
                          extra=EXTRA)
    cfg = load_config(path, ["dataset.classes=[normal, lesion]"])
    results, _ = run_pipeline(cfg, tracker=MlflowTracker(store))
    ev = results[-1]
    assert ev.name == "evaluate" and ev.state == "ran", ev
    folder = Path(ev.path)
    splits = json.loads(next((tmp_path / "workspace/stages/split").glob("*/splits.json")).read_text())
    for name, ids in (("test", splits["test"]), ("val", splits["folds"][0]["val"])):
        rows = list(csv.DictReader((folder / name / "predictions.csv").open()))
        assert sorted(r["case_id"] for r in rows) == sorted(ids)
        y = [r["true_class"] for r in rows]
        assert all(t == ("lesion" if int(r["case_id"][1:]) % 2 else "normal") for t, r in zip(y, rows))
        pred = [r["predicted_class"] for r in rows]
        probs = np.array([[float(r["p_normal"]), float(r["p_lesion"])] for r in rows])
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        report = json.loads((folder / name / "metrics.json").read_text())
        assert report["balanced_accuracy"] == skm.balanced_accuracy_score(y, pred)
        conf = json.loads((folder / name / "confusion.json").read_text())
        assert np.sum(conf["counts"]) == len(ids) and conf["classes"] == ["normal", "lesion"]
        assert (folder / name / "misclassified.png").stat().st_size > 0
    client = MlflowClient(store)
    run = client.get_run(ev.run_id)
    assert "test_balanced_accuracy" in run.data.metrics and "val_roc_auc_macro_ovr" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(ev.run_id, "stage/test")}
    assert {"stage/test/confusion.png", "stage/test/confusion.json", "stage/test/predictions.csv",
            "stage/test/confusion.csv", "stage/test/misclassified.png"} <= logged
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["test_balanced_accuracy"] == run.data.metrics["test_balanced_accuracy"]
