"""Slow: the `make run` job end to end on the demo sample data, read back through MLflow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from data.casefile import read_meta

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _medflow(*args, env):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, cwd=ROOT, check=True,
                          capture_output=True, text=True)


def test_demo_job_end_to_end(tmp_path):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    env = dict(os.environ, MEDFLOW_WORKSPACE=str(tmp_path / "ws"), MLFLOW_TRACKING_URI=store)
    _medflow("sample-data", "--size", "demo", env=env)
    configs = [str(ROOT / f"pipelines/configs/{n}.yaml") for n in ("segmentation", "classification")]
    out = _medflow("run", *configs, "--profile", "demo", env=env).stdout
    assert "pipeline segmentation" in out and "pipeline classification" in out and "medflow ui" in out

    client = MlflowClient(store)
    for name, n_cases, spacing in (("segmentation", 10, [1.0, 1.0, 1.0]), ("classification", 24, [2.0, 2.0, 2.0])):
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1
        stages = {r.data.tags["medflow.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId")}
        assert set(stages) == {"ingest", "preprocess", "split", "train"}
        train = stages["train"]
        assert "augment/preview.png" in [a.path for a in client.list_artifacts(train.info.run_id, "augment")]
        assert len(client.get_metric_history(train.info.run_id, "val_loss")) == 2  # demo: 2 epochs
        assert stages["preprocess"].data.metrics["cases"] == n_cases
        assert parents[0].inputs.dataset_inputs
        pre_dir = Path(stages["preprocess"].data.tags["medflow.stage_dir"])
        for case in (pre_dir / "cases").glob("*.npz"):
            meta = read_meta(case)
            assert meta["axcodes"] == "RAS" and np.allclose(meta["spacing"], spacing)

    # A corrupted file dropped into a copy of the dataset is quarantined; the rest completes.
    data = tmp_path / "ws/sample/demo/brain_tissue"
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    blob = (broken / "imagesTr/brain_004.nii.gz").read_bytes()
    (broken / "imagesTr/brain_004.nii.gz").write_bytes(blob[: len(blob) // 2])
    res = _medflow("run", configs[0], "--set", f"dataset.root={broken}", "--stage", "preprocess", env=env)
    assert "brain_004.nii.gz: truncated or corrupt gzip" in res.stderr
    (ingest_run,) = [r for r in client.search_runs([client.get_experiment_by_name("segmentation").experiment_id])
                     if r.data.tags.get("medflow.stage") == "ingest" and r.data.metrics.get("quarantined") == 1]
    manifest = json.loads((Path(ingest_run.data.tags["medflow.stage_dir"]) / "manifest.json").read_text())
    assert len(manifest["cases"]) == 9 and manifest["quarantine"][0]["case_id"] == "brain_004"
