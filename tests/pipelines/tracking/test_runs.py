"""End to end into a temporary MLflow store, read back through the MLflow client."""

from __future__ import annotations

import json
import os

import pytest

import mlflow
from medflow.core.engine import StageFailed
from medflow.core.loading import load_config
from medflow.core.runner import run_pipeline
from medflow.tracking.runs import MlflowTracker
from mlflow import MlflowClient
from tests.helpers import make_msd, write_pipeline


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path / 'store.db'}"


def test_runs_nesting_dataset_and_quarantine(tmp_path, store):
    root = make_msd(tmp_path / "msd", n=5)
    (root / "imagesTr" / "case_03.nii.gz").write_bytes(b"\x1f\x8bbroken")  # corrupt gzip
    cfg = load_config(write_pipeline(tmp_path / "p.yaml", root), ["tracking.experiment=review"])
    tracker = MlflowTracker(store)
    results, parent_id = run_pipeline(cfg, tracker=tracker)
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("review")
    runs = client.search_runs([exp.experiment_id])
    parent = client.get_run(parent_id)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert sorted(r.data.tags["medflow.stage"] for r in children) == ["ingest", "preprocess", "split"]
    for r in children:
        assert r.data.tags["medflow.key"] == next(x.key for x in results if x.name == r.data.tags["medflow.stage"])
        assert r.info.status == "FINISHED"
    assert parent.data.params["preprocess.spacing"] == "[1.0, 1.0, 1.0]"
    assert parent.data.tags["medflow.pipeline"] == "test"
    assert "config/pipeline.yaml" in [a.path for a in client.list_artifacts(parent_id, "config")]
    ingest_run = next(r for r in children if r.data.tags["medflow.stage"] == "ingest")
    assert ingest_run.data.metrics["cases"] == 4 and ingest_run.data.metrics["quarantined"] == 1
    for run in (parent, ingest_run):
        (ds_input,) = run.inputs.dataset_inputs
        assert ds_input.dataset.name == "Cubes"
        assert json.loads(ds_input.dataset.profile)["num_rows"] == 4
    path = mlflow.artifacts.download_artifacts(run_id=ingest_run.info.run_id, artifact_path="stage/quarantine.json",
                                               dst_path=str(tmp_path / "dl"), tracking_uri=store)
    (q,) = json.loads(open(path).read())
    assert q["case_id"] == "case_03" and "truncated or corrupt gzip" in q["error"]
    # A second invocation is a new parent run whose stages are marked skipped.
    _, parent2 = run_pipeline(cfg, tracker=tracker)
    skipped = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent2}'")
    assert {r.data.tags["medflow.skipped"] for r in skipped} == {"true"}


def test_failed_stage_marks_runs_failed(tmp_path, store):
    root = make_msd(tmp_path / "msd", n=4)
    os.remove(root / "imagesTr" / "case_02.nii.gz")
    cfg = load_config(write_pipeline(tmp_path / "p.yaml", root))
    tracker = MlflowTracker(store)
    with pytest.raises(StageFailed):
        run_pipeline(cfg, tracker=tracker, strict=True)
    runs = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("test").experiment_id])
    assert {r.info.status for r in runs} == {"FAILED"}
    ingest = next(r for r in runs if r.data.tags.get("medflow.stage") == "ingest")
    assert "case_02.nii.gz: missing file" in ingest.data.tags["medflow.error"]


@pytest.mark.slow
def test_tracking_server_works_the_same(tmp_path):
    """MLFLOW_TRACKING_URI=http://... : runs and artifacts go through a real server on loopback."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
         "--artifacts-destination", str(tmp_path / "srv-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        root = make_msd(tmp_path / "msd", n=4)
        cfg = load_config(write_pipeline(tmp_path / "p.yaml", root))
        _, parent_id = run_pipeline(cfg, tracker=MlflowTracker(uri))
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
        assert len(runs) == 4 and client.get_run(parent_id).inputs.dataset_inputs
        ingest = next(r for r in runs if r.data.tags.get("medflow.stage") == "ingest")
        names = [a.path for a in client.list_artifacts(ingest.info.run_id, "stage")]
        assert "stage/fingerprint.json" in names and "stage/quarantine.json" in names
        assert list((tmp_path / "srv-artifacts").rglob("fingerprint.json"))  # stored by the server
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_mlflow_project_entry_point(tmp_path, store):
    """`mlflow run mlflow/`: the project's run becomes the pipeline's parent, stages nest under it."""
    import subprocess
    import sys
    from pathlib import Path

    root = make_msd(tmp_path / "msd", n=4)
    cfg = write_pipeline(tmp_path / "p.yaml", root, extra="profiles:\n  demo: {}\n")
    project = Path(__file__).resolve().parents[3] / "mlflow"
    env = dict(os.environ, MLFLOW_TRACKING_URI=store)
    subprocess.run([sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", "local",
                    "--experiment-name", "projects", "-P", f"pipeline={cfg}", "-P", "profile=demo"],
                   env=env, check=True, capture_output=True, cwd=tmp_path)
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("projects").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags["medflow.pipeline"] == "test" and parent.info.status == "FINISHED"
    assert sorted(r.data.tags["medflow.stage"] for r in runs if r is not parent) == ["ingest", "preprocess", "split"]
