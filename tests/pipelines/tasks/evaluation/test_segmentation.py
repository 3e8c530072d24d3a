"""Evaluate stage: native-space predictions, metrics, confusion matrix, montage, baseline, resume, MLflow."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medflow.core.engine import StageFailed
from medflow.core.runner import run_pipeline
from medflow.tracking.runs import MlflowTracker
from mlflow import MlflowClient
from tests.helpers import make_msd, read_splits, run_evaluation

EXTRA = """
loader: {mode: 2d, patch_size: [16, 16], slice_axis: 2, samples_per_case: 4, batch_size: 4}
augment: {seed: 1, transforms: [{name: flip, p: 0.5}]}
model: {name: unet2d, params: {depth: 2, filters: 4}}
train: {epochs: 2, learning_rate: 0.01, monitor: val_dice, val_samples_per_case: 1, preview_cases: 1}
evaluate: {overlap: 0.25, batch_size: 16, baseline: multi_otsu, baseline_labels: [2, 1], report_classes: [cube]}
"""


def test_evaluate_stage_end_to_end(tmp_path):
    root = make_msd(tmp_path / "msd", n=6)
    store, cfg, ev = run_evaluation(tmp_path, root, EXTRA, ["split.test_fraction=0.34"])
    folder = Path(ev.path)
    summary = json.loads((folder / "summary.json").read_text())
    test_ids = read_splits(tmp_path)["test"]
    assert summary["methods"]["network"]["cases"] == len(test_ids) == 2

    # predictions: one label map per test case on the input's own grid and header
    for case_id in test_ids:
        pred = nib.load(str(folder / "predictions" / f"{case_id}.nii.gz"))
        src = nib.load(str(root / "imagesTr" / f"{case_id}.nii.gz"))
        assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
        assert pred.get_data_dtype() == np.uint8
        assert set(np.unique(np.asanyarray(pred.dataobj))) <= {0, 1, 2}

    # the per-case table: a row per case, method and foreground class
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert len(rows) == 2 * 2 * 2 and {r["method"] for r in rows} == {"network", "multi_otsu"}
    otsu = [r for r in rows if r["method"] == "multi_otsu"]
    assert all(float(r["dice"]) > 0.95 for r in otsu)  # two well-separated intensities inside the mask
    for r in rows:
        assert 0 <= float(r["dice"]) <= 1 and float(r["hd95_mm"]) >= 0

    # the voxel confusion matrix covers every native voxel of the test cases
    conf = json.loads((folder / "confusion.json").read_text())
    n_voxels = sum(int(np.prod(nib.load(str(root / "imagesTr" / f"{c}.nii.gz")).shape)) for c in test_ids)
    assert np.sum(conf["network"]["counts"]) == n_voxels == np.sum(conf["multi_otsu"]["counts"])
    assert conf["classes"] == ["background", "cube", "slab"]
    np.testing.assert_allclose(np.sum(conf["network"]["row_normalized"], 1), 1.0)
    assert summary["methods"]["multi_otsu"]["mean_dice"] > 0.95

    client = MlflowClient(store)
    run = client.get_run(ev.run_id)
    assert run.data.metrics["multi_otsu_test_mean_dice"] > 0.95 and "test_mean_dice" in run.data.metrics
    assert "test_hd95_mm_cube" in run.data.metrics
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["test_mean_dice"] == run.data.metrics["test_mean_dice"]
    logged = {a.path for a in client.list_artifacts(ev.run_id, "stage")}
    assert {"stage/confusion.png", "stage/montage.png", "stage/metrics.csv", "stage/confusion.json"} <= logged

    # per-case resume: drop one case's result and the manifest; only that case is redone
    keep, redo = (folder / "cases" / f"{test_ids[0]}.json"), (folder / "cases" / f"{test_ids[1]}.json")
    before = keep.stat().st_mtime_ns
    os.remove(folder / "manifest.json")
    redo.unlink()
    again, _ = run_pipeline(cfg, tracker=MlflowTracker(store))
    assert again[-1].state == "ran" and again[-1].path == ev.path
    assert keep.stat().st_mtime_ns == before and redo.exists()
    assert json.loads((folder / "summary.json").read_text())["methods"] == summary["methods"]


def _scoring_job(tmp_path, case_id, shift, shape=(12, 10, 8)):
    truth = np.zeros(shape, np.uint8)
    truth[2:8, 2:7, 2:6] = 1
    truth[8:11, 2:7, 2:6] = 2
    pred = np.roll(truth, shift, axis=0)
    return {"case_id": case_id, "truth": truth, "pred": pred, "image": None, "spacing": (1.0, 1.5, 2.0),
            "classes": ["background", "cube", "slab"], "hd95": True, "baseline": None, "baseline_labels": [],
            "out": str(tmp_path / "cases" / f"{case_id}.json"), "seconds": 0.5}


def test_cases_scored_in_a_worker_match_the_serial_path_and_a_bad_one_is_quarantined(tmp_path, monkeypatch):
    import dataclasses
    from types import SimpleNamespace

    from medflow.core.engine import RunContext
    from medflow.tasks.evaluation import segmentation as seg

    (tmp_path / "cases").mkdir()
    jobs = {"a": _scoring_job(tmp_path, "a", 0), "b": _scoring_job(tmp_path, "b", 1),
            "c": {**_scoring_job(tmp_path, "c", 2), "pred": np.zeros((3, 3, 3), np.uint8)}}  # not the truth's grid
    monkeypatch.setattr(seg, "segment_case", lambda rec, net, plan, ev, out: jobs[rec["case_id"]])
    work = [(c, f"/data/{c}.nii.gz", {"case_id": c}) for c in sorted(jobs)]
    out = SimpleNamespace(path=tmp_path)
    results, quarantine = seg._segment_and_score(work, None, None, None, out, RunContext(workers=2), 0, 3)

    assert sorted(results) == ["a", "b"]
    assert [q["case_id"] for q in quarantine] == ["c"] and quarantine[0]["path"] == "/data/c.nii.gz"
    assert not (tmp_path / "cases" / "c.json").exists()
    for case_id in ("a", "b"):  # the record on disk is the one returned, and the one the serial path writes
        written = json.loads((tmp_path / "cases" / f"{case_id}.json").read_text())
        serial = seg.score_case({**jobs[case_id], "out": str(tmp_path / f"{case_id}-serial.json")})
        assert written == results[case_id]
        assert {**serial, "seconds": 0} == {**written, "seconds": 0} and written["seconds"] >= 0.5
    rows = {r["class"]: r for r in results["a"]["methods"]["network"]["rows"]}
    assert rows["cube"]["dice"] == 1.0 and rows["cube"]["hd95_mm"] == 0.0
    assert results["b"]["methods"]["network"]["rows"][0]["dice"] < 1.0
    with pytest.raises(StageFailed, match="--strict"):
        seg._segment_and_score(work, None, None, None, out, dataclasses.replace(RunContext(workers=2), strict=True),
                               0, 3)
