"""A pipeline run's stages read back from MLflow, for ``medflow report RUN_ID``."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from medflow.core.engine import MANIFEST, StageOutput
from medflow.tracking.runs import tracking_uri
from mlflow import MlflowClient


def run_outputs(run_id: str) -> tuple[str, dict[str, StageOutput], str | None, str]:
    """(run name, stage name -> StageOutput, resolved config YAML or None, description) of a parent,
    fold or model run, from its stage runs' ``medflow.stage_dir`` tags.

    Raises:
        ValueError: no such run, or none of its stage folders is still in the workspace.
    """
    client = MlflowClient(tracking_uri())
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ValueError(f"no MLflow run {run_id} in {tracking_uri()}") from None

    def stage_runs(parent: str) -> list:
        found = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'",
                                   max_results=1000, order_by=["start_time ASC"])
        return [r for r in found if "medflow.stage" in r.data.tags]

    # A fold or compared model (a group run) trained and evaluated; the shared stages (ingest,
    # preprocess, split) ran once, under its parent.
    above = run.data.tags.get("mlflow.parentRunId")
    runs = (stage_runs(above) if above else []) + stage_runs(run_id)
    outputs = {}
    for child in runs:
        folder = Path(child.data.tags["medflow.stage_dir"])
        if (folder / MANIFEST).exists():  # the newest run of a stage wins (runs are in start order)
            name = child.data.tags["medflow.stage"]
            outputs[name] = StageOutput(name, folder, json.loads((folder / MANIFEST).read_text()))
    if not outputs:
        raise ValueError(f"run {run_id}: none of its stage folders is in the workspace any more")
    try:
        config = mlflow.artifacts.load_text(f"runs:/{run_id}/config/pipeline.yaml")
    except Exception:  # a fold or model group run carries no config of its own
        config = None
    return run.info.run_name, outputs, config, run.data.params.get("description", "")
