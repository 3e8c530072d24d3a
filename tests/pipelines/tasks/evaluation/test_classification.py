"""Evaluate stage for classifiers: val and test reports, confusion matrices and predictions, in MLflow."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medflow.core.loading import load_config
from medflow.tracking.runs import MlflowTracker
from mlflow import MlflowClient
from tests.helpers import EVAL_STAGES, make_cls_dataset, read_splits, run_evaluation, write_pipeline

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
    store, cfg, ev = run_evaluation(tmp_path, root, EXTRA, ["dataset.classes=[normal, lesion]"], layout="csv")
    folder = Path(ev.path)
    splits = read_splits(tmp_path)
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


def test_normative_baseline_is_scored_beside_the_network(tmp_path):
    root = make_cls_dataset(tmp_path / "cls", n=16)
    # Registered (the default), without the high-pass: its 15 mm scale is as wide as this toy head (20 x 16 x 18 mm).
    store, cfg, ev = run_evaluation(tmp_path, root, EXTRA + "evaluate: {baseline: normative, normative_top_k: 4, "
                                    "normative_highpass_mm: null}\n",
                                    ["dataset.classes=[normal, lesion]", "dataset.normal_class=normal"], layout="csv")
    folder = Path(ev.path)
    summary = json.loads((folder / "summary.json").read_text())
    for name in ("val", "test"):
        rows = list(csv.DictReader((folder / name / "normative" / "predictions.csv").open()))
        assert sorted(r["case_id"] for r in rows) == sorted(summary["splits"][name])
        assert summary["baselines"]["normative"][name]["n"] == len(rows)
    # the toy lesion is a bright cube: z-tails against the normal subjects find it
    assert summary["baselines"]["normative"]["test"]["balanced_accuracy"] >= 0.75
    run = MlflowClient(store).get_run(ev.run_id)
    assert "normative_test_balanced_accuracy" in run.data.metrics
    from medflow.tasks import TASKS

    lines = TASKS["classification"].summary_lines(folder)
    assert any(line.strip().startswith("normative") for line in lines)


def test_normative_class_must_be_a_class(tmp_path):
    root = make_cls_dataset(tmp_path / "cls", n=16)
    cfg = load_config(write_pipeline(tmp_path / "p.yaml", root, layout="csv", stages=EVAL_STAGES,
                                     extra=EXTRA + "evaluate: {baseline: normative}\n"),
                      ["dataset.classes=[normal, lesion]", "dataset.normal_class=healthy"])
    from medflow.core.engine import StageFailed
    from medflow.core.runner import run_pipeline

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDFLOW_WORKSPACE", str(tmp_path / "ws"))
        with pytest.raises(StageFailed, match="needs dataset.normal_class, one of"):
            run_pipeline(cfg)


COMPARE = """
compare:
  models:
    - {name: logistic, params: {downsample: 1, l2: 0.0}}
    - {name: mlp, params: {downsample: 2, units: [8], dropout: 0.0}}
"""


def test_cross_validation_and_comparison(tmp_path):
    from medflow.core.experiments import run_compare, run_cv

    root = make_cls_dataset(tmp_path / "cls", n=16)
    store = f"sqlite:///{tmp_path / 's.db'}"
    path = write_pipeline(tmp_path / "p.yaml", root, layout="csv", stages=EVAL_STAGES.replace("]", ", export]"),
                          extra=EXTRA + COMPARE)
    cfg = load_config(path, ["dataset.classes=[normal, lesion]", "split.folds=3", "train.epochs=2"])
    client = MlflowClient(store)

    cv = run_cv(cfg, tracker=MlflowTracker(store))
    splits = read_splits(tmp_path)
    non_test = sorted(c for f in splits["folds"] for c in f["val"])
    assert len(non_test) == len(set(non_test)) == 16 - len(splits["test"])  # each case in one held-out fold
    seen = []
    for fold_dir in (tmp_path / "workspace/stages/evaluate").iterdir():
        seen += [r["case_id"] for r in csv.DictReader((fold_dir / "val" / "predictions.csv").open())]
    assert sorted(seen) == non_test
    assert np.sum(cv["confusion"]) == len(non_test) and len(cv["folds"]) == 3
    parent = client.get_run(cv["parent_run_id"])
    assert parent.data.tags["medflow.kind"] == "cv"
    ba = [f["balanced_accuracy"] for f in cv["folds"]]
    assert parent.data.metrics["cv_balanced_accuracy_mean"] == np.mean(ba)
    assert parent.data.metrics["cv_balanced_accuracy_sd"] == np.std(ba, ddof=1)
    assert {"cv/folds.csv", "cv/confusion.png", "cv/summary.json"} <= {a.path for a in client.list_artifacts(
        cv["parent_run_id"], "cv")}
    runs = client.search_runs([parent.info.experiment_id])
    folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
             and r.data.tags.get("medflow.kind") == "cv-fold"]
    assert len(folds) == 3
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == folds[0].info.run_id]
    assert {r.data.tags["medflow.stage"] for r in nested} == {"train", "evaluate"}

    assert not (tmp_path / "workspace/exports").exists()  # folds are scored, not exported
    assert not client.search_registered_models()

    cmp_cfg = load_config(path, ["dataset.classes=[normal, lesion]", "split.folds=3", "train.epochs=2",
                                 "dataset.normal_class=normal", "evaluate.baseline=normative"])
    cmp = run_compare(cmp_cfg, tracker=MlflowTracker(store))
    names = ["logistic", "mlp", "normative (baseline)"]
    assert [r["model"] for r in cmp["rows"]] == names and cmp["best"] in ("logistic", "mlp")
    table = client.download_artifacts(cmp["parent_run_id"], "comparison/comparison.csv")
    rows = list(csv.DictReader(open(table)))
    assert [r["model"] for r in rows] == names and "test_balanced_accuracy" in rows[0]
    assert {"test_recall_normal", "test_recall_lesion"} <= set(rows[0])
    assert "normative_test_balanced_accuracy" in client.get_run(cmp["parent_run_id"]).data.metrics
    assert int(rows[0]["parameters"]) == 8 * 8 * 8 * 2 + 2  # logistic: one weight per voxel and class
