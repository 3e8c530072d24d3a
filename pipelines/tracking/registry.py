"""The model registry: log an export bundle as a pyfunc model, the champion rule, and fetching bundles back."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import mlflow
from medflow.data import faults
from medflow.data.atomic import write_atomic
from medflow.tracking.runs import tracking_uri
from medflow.tracking.signature import export_signature, requirements
from mlflow import MlflowClient


COMPARISON, DECISION = "medflow.champion_comparison", "medflow.champion_decision"


def register_bundle(client: MlflowClient, folder, info: dict) -> dict:
    """Log an export bundle as a pyfunc model in the active stage run, register it, and move
    ``champion`` to it only if it beats the current champion on ``info['metric']``.

    Registering twice never makes two versions: a version is created with its identifying tags in one
    call (``medflow.bundle``: the bundle folder, which the export key names), and a run that finds
    one for its bundle (an export killed after registering, re-run) reuses it with the champion
    decision recorded on it (recorded before the alias moves). So a kill at any point leaves no
    duplicate and no half-tagged version.

    Args:
        client: the tracker's client.
        folder: the bundle folder (plan.json, model files).
        info: name (registry name), runtime, metric, value, greater_is_better.

    Returns:
        {"name", "version", "model_uri", "champion" (bool), "comparison" (one line)}.
    """
    plan = json.loads((Path(folder) / "plan.json").read_text())
    name = info["name"]
    metric, value, greater = info["metric"], float(info["value"]), bool(info["greater_is_better"])
    mv = registered_version(client, name, folder)
    if mv is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logged = mlflow.pyfunc.log_model(
                name="model", loader_module="medflow.inference.serving", data_path=str(folder),
                signature=export_signature(plan), pip_requirements=requirements(),
                # allow_paths is logged empty so that a load-time model_config may set it (MLflow lets a
                # load override only the keys the logged config has); empty means request data only.
                model_config={"runtime": info["runtime"], "allow_paths": []},
                metadata={"medflow_family": plan["family"], "medflow_version": plan["version"]})
            faults.point("register")
            mv = mlflow.register_model(logged.model_uri, name, tags={
                "medflow.bundle": str(folder), "medflow.selection_metric": metric,
                "medflow.selection_value": repr(value)})
        faults.point("register")
    version = str(mv.version)
    current = champion(client, name)
    if mv.tags.get(DECISION) in ("moved", "kept"):  # decided before (a re-run): the same decision and line
        text = mv.tags.get(COMPARISON, "")
        move = mv.tags[DECISION] == "moved" and (
            current is None or str(current.version) == version or champion_decision(current, metric, value, greater)[0])
    else:  # the decision is recorded first, so a re-run after a kill repeats it rather than re-deciding
        move, text = champion_decision(current, metric, value, greater)
        client.set_model_version_tag(name, version, COMPARISON, text)
        client.set_model_version_tag(name, version, DECISION, "moved" if move else "kept")
        faults.point("register")
    if move:
        client.set_registered_model_alias(name, "champion", version)
    mlflow.set_tag(COMPARISON, text)
    return {"name": name, "version": version, "model_uri": mv.source, "champion": move, "comparison": text}


def registered_version(client: MlflowClient, name: str, folder):
    """The registered version of ``name`` made from the bundle ``folder``, or None."""
    quoted = name.replace("'", "\\'")
    try:
        versions = client.search_model_versions(f"name = '{quoted}'")
    except mlflow.exceptions.MlflowException:
        return None
    found = [v for v in versions if v.tags.get("medflow.bundle") == str(folder)]
    return min(found, key=lambda v: int(v.version)) if found else None


def champion_decision(current, metric: str, value: float, greater: bool) -> tuple[bool, str]:
    """(move the alias?, one line why) for a new version scoring ``value`` on ``metric``."""
    if current is None:
        return True, f"{metric}={value:.6g}; no champion yet"
    old = current.tags.get("medflow.selection_value")
    if current.tags.get("medflow.selection_metric") != metric or old is None:
        return False, (f"{metric}={value:.6g}; champion v{current.version} was selected by "
                       f"{current.tags.get('medflow.selection_metric')!r}, not comparable: kept")
    old = float(old)
    move = value > old if greater else value < old
    return move, (f"{metric}={value:.6g} vs champion v{current.version} {old:.6g} "
                  f"({'higher' if greater else 'lower'} is better): {'moved' if move else 'kept'}")


def champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException:
        return None


def fetch_bundle(uri: str) -> Path:
    """The local bundle folder of a registered model (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``)
    or a logged one (``runs:/ID/model``), downloaded once into ``<workspace>/models/``."""
    from mlflow.models import Model

    from medflow.core.workspace import workspace_root

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one predict bar is enough
    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient(tracking_uri())
    if uri.startswith("models:/"):
        name, _, ref = uri.removeprefix("models:/").partition("@")
        if ref:
            mv = client.get_model_version_by_alias(name, ref)
        else:
            name, _, number = uri.removeprefix("models:/").rpartition("/")
            mv = client.get_model_version(name, number)
        cache = workspace_root() / "models" / name / str(mv.version)
        source = f"models:/{name}/{mv.version}"
    else:
        cache = workspace_root() / "models" / "runs" / uri.removeprefix("runs:/").replace("/", "_")
        source = uri
    if not (cache / ".complete").exists():
        with write_atomic(cache, folder=True) as tmp:
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp))
            (tmp / ".complete").write_text(source)
    conf = Model.load(str(cache)).flavors["python_function"]
    return cache / conf["data"]
