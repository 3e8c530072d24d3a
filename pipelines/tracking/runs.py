"""MLflow tracking: the only module that imports mlflow.

Default store: SQLite at ``<project>/mlflow/mlflow.db`` with artifacts under
``<project>/mlflow/artifacts``. ``MLFLOW_TRACKING_URI`` overrides it (another
database, or an ``http://`` tracking server, which then owns artifact storage).
Telemetry is off before mlflow is imported, so nothing leaves the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
warnings.filterwarnings("ignore", module=r"mlflow\..*")

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import DatasetInput, InputTag  # noqa: E402

from medflow.data.atomic import publish  # noqa: E402
from medflow.core.config import dump_yaml, flatten  # noqa: E402
from medflow.core.engine import code_version  # noqa: E402
from medflow.core.workspace import mlflow_dir, project_root  # noqa: E402


def default_uri() -> str:
    return f"sqlite:///{mlflow_dir() / 'mlflow.db'}"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def default_artifact_root() -> str:
    return (mlflow_dir() / "artifacts").as_uri()


def git_commit() -> tuple[str | None, bool]:
    """(commit, dirty) of the project checkout, or (None, False) outside git."""
    root = project_root()
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, False


class MlflowTracker:
    """Parent run per pipeline invocation, nested run per stage."""

    def __init__(self, uri: str | None = None):
        self.uri = uri or tracking_uri()
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        self.experiment_name: str | None = None
        self._parent_id: str | None = None
        self._experiment_id: str | None = None

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        # Only local stores need an artifact location; a server decides its own.
        location = default_artifact_root() + f"/{name}" if self.uri.startswith("sqlite:") else None
        return self.client.create_experiment(name, artifact_location=location)

    @contextmanager
    def pipeline(self, cfg, config_path=None, profile=None, run_name=None, kind="pipeline"):
        self.experiment_name = cfg.tracking.experiment or cfg.name
        commit, dirty = git_commit()
        tags = {"medflow.pipeline": cfg.name, "medflow.code_version": code_version("medflow.core.catalog"),
                "medflow.profile": ",".join([profile] if isinstance(profile, str) else profile or []),
                "medflow.kind": kind, "mlflow.source.type": "LOCAL"}
        if commit:
            tags.update({"mlflow.source.git.commit": commit, "medflow.git_dirty": str(dirty).lower()})
        if config_path:
            tags["medflow.config_file"] = str(config_path)
        launched = os.environ.pop("MLFLOW_RUN_ID", None)  # consumed here, or stage runs would resume it
        if launched:  # started by `mlflow run mlflow/`: that run is the pipeline's parent run
            exp_id = self.client.get_run(launched).info.experiment_id
            self.experiment_name = self.client.get_experiment(exp_id).name
            start = {"run_id": launched}
        else:
            exp_id = self.experiment_id(self.experiment_name)
            start = {"experiment_id": exp_id, "run_name": run_name or cfg.name}
        self._experiment_id = exp_id
        with mlflow.start_run(**start, tags=tags) as run:
            self._parent_id = run.info.run_id
            resolved = cfg.resolved()
            mlflow.log_params({k: _param(v) for k, v in flatten(resolved).items()})
            mlflow.log_text(dump_yaml(resolved), "config/pipeline.yaml")
            try:
                yield run
            finally:
                self._parent_id = None

    @contextmanager
    def stage(self, name, key, path):
        tags = {"medflow.stage": name, "medflow.key": key, "medflow.stage_dir": str(path)}
        with mlflow.start_run(run_name=name, nested=True, experiment_id=self._experiment_id, tags=tags) as run:
            yield run

    @contextmanager
    def group(self, name: str, tags: dict | None = None):
        """A nested run holding further stage runs: one fold of a cross-validation, one model of a comparison."""
        with mlflow.start_run(run_name=name, nested=True, experiment_id=self._experiment_id, tags=tags or {}) as run:
            yield run

    def log_to(self, run_id: str, metrics: dict | None = None, artifacts=(), folder: str | None = None) -> None:
        """Metrics and files for a run that is not the active one (a parent after its children)."""
        for name, value in (metrics or {}).items():
            self.client.log_metric(run_id, name, float(value))
        for path in artifacts:
            self.client.log_artifact(run_id, str(path), folder)

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Live metrics of the active stage run (e.g. per training epoch)."""
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path, folder: str) -> None:
        mlflow.log_artifact(str(path), folder)

    def log_failure(self, message: str) -> None:
        mlflow.set_tag("medflow.error", message[:5000])

    def log_stage(self, output, skipped: bool, seconds: float) -> None:
        mlflow.set_tag("medflow.skipped", str(skipped).lower())
        metrics = {k: float(v) for k, v in output.manifest.get("metrics", {}).items()}
        mlflow.log_metrics({**metrics, "seconds": seconds})
        if self._parent_id:  # a stage's headline figures also go on the pipeline run, for the runs table
            for name, value in output.manifest.get("headline", {}).items():
                self.client.log_metric(self._parent_id, name, float(value))
        mlflow.log_artifact(str(output.file("manifest.json")), "stage")
        for name in output.manifest.get("artifacts", []):  # sub-folders are kept: val/ and test/ both exist
            mlflow.log_artifact(str(output.file(name)), "/".join(["stage", *Path(name).parts[:-1]]))
        if "dataset" in output.manifest and output.file("cases.csv").exists():
            self._log_dataset(output)

    def log_shard(self, output, seconds: float) -> None:
        """One shard's share of a stage: its counts and report (the stage's manifest comes with the merge)."""
        rep = output.report
        mlflow.set_tag("medflow.shard", f"{rep['index']}/{rep['count']}")
        mlflow.log_metrics({"cases": len(rep["cases"]), "quarantined": len(rep["quarantine"]), "seconds": seconds})
        mlflow.log_artifact(str(output.path / "shards" / f"{rep['index']}-of-{rep['count']}.json"), "stage/shards")

    def register_export(self, folder, info: dict) -> dict:
        """Log an export bundle as a pyfunc model in the active stage run, register it, and move
        ``champion`` to it only if it beats the current champion on ``info['metric']``.

        Args:
            folder: the bundle folder (plan.json, model files).
            info: name (registry name), runtime, metric, value, greater_is_better.

        Returns:
            {"name", "version", "model_uri", "champion" (bool), "comparison" (one line)}.
        """
        import json

        plan = json.loads((Path(folder) / "plan.json").read_text())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logged = mlflow.pyfunc.log_model(
                name="model", loader_module="medflow.inference.serving", data_path=str(folder),
                signature=export_signature(plan), pip_requirements=_requirements(),
                model_config={"runtime": info["runtime"]}, registered_model_name=info["name"],
                metadata={"medflow_family": plan["family"], "medflow_version": plan["version"]})
        name, version = info["name"], str(logged.registered_model_version)
        metric, value, greater = info["metric"], float(info["value"]), bool(info["greater_is_better"])
        self.client.set_model_version_tag(name, version, "medflow.selection_metric", metric)
        self.client.set_model_version_tag(name, version, "medflow.selection_value", repr(value))
        self.client.set_model_version_tag(name, version, "medflow.bundle", str(folder))
        champion = self._champion(name)
        if champion is None:
            move, text = True, f"{metric}={value:.6g}; no champion yet"
        else:
            old = champion.tags.get("medflow.selection_value")
            if champion.tags.get("medflow.selection_metric") != metric or old is None:
                move, text = False, (f"{metric}={value:.6g}; champion v{champion.version} was selected by "
                                     f"{champion.tags.get('medflow.selection_metric')!r}, not comparable: kept")
            else:
                old = float(old)
                move = value > old if greater else value < old
                text = (f"{metric}={value:.6g} vs champion v{champion.version} {old:.6g} "
                        f"({'higher' if greater else 'lower'} is better): {'moved' if move else 'kept'}")
        if move:
            self.client.set_registered_model_alias(name, "champion", version)
        self.client.set_model_version_tag(name, version, "medflow.champion_comparison", text)
        mlflow.set_tag("medflow.champion_comparison", text)
        return {"name": name, "version": version, "model_uri": logged.model_uri, "champion": move,
                "comparison": text}

    def _champion(self, name: str):
        try:
            return self.client.get_model_version_by_alias(name, "champion")
        except mlflow.exceptions.MlflowException:
            return None

    def _log_dataset(self, output) -> None:
        """The ingested dataset as a run input: per-case fingerprint table, digest = ingest digest."""
        info = output.manifest["dataset"]
        table = pd.read_csv(output.file("cases.csv"), dtype=str, keep_default_na=False)
        with warnings.catch_warnings():  # mlflow registers the local source twice and warns about it
            warnings.simplefilter("ignore")
            ds = mlflow.data.from_pandas(table, source=info["root"], name=info["name"], digest=output.digest[:16],
                                         targets="target" if info["task"] == "classification" else None)
        entity = ds._to_mlflow_entity()
        for run_id in filter(None, (mlflow.active_run().info.run_id, self._parent_id)):
            context = "ingest" if run_id != self._parent_id else "pipeline"
            self.client.log_inputs(run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", context)])])


def _param(value) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _requirements() -> list[str]:
    """The serving environment: our own pins (so mlflow does not load the model to infer them)."""
    from importlib.metadata import PackageNotFoundError, version

    names = ("tensorflow-cpu", "keras", "mlflow", "nibabel", "scipy", "numpy", "pandas", "onnxruntime")
    out = []
    for name in names:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return out


def export_signature(plan: dict):
    """The pyfunc signature of an export bundle (pipelines/serving.py documents the columns)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    family, classes = plan["family"], plan.get("classes", [])
    inputs = [ColSpec("string", "case", required=False), ColSpec("string", "path", required=False)]
    if family == "reconstruction":
        inputs.append(ColSpec(Array(Array("double")), "sinogram", required=False))
        outputs = [ColSpec("string", "case"), ColSpec("string", "error"), ColSpec(Array(Array("double")), "image",
                                                                                   required=False)]
    else:
        voxels = "double"
        for _ in range(3 if len(plan["channels"]) == 1 else 4):  # (X, Y, Z) or (X, Y, Z, C)
            voxels = Array(voxels)
        inputs += [ColSpec("string", "nifti_b64", required=False), ColSpec(voxels, "image", required=False),
                   ColSpec(Array(Array("double")), "affine", required=False)]
        outputs = [ColSpec("string", "case"), ColSpec("string", "error")]
        if family == "segmentation":
            outputs.append(ColSpec("string", "labels_nifti_b64", required=False))
            outputs += [ColSpec("double", f"volume_ml_{c}", required=False) for c in classes[1:]]
        else:
            outputs.append(ColSpec("string", "class", required=False))
            outputs += [ColSpec("double", f"p_{c}", required=False) for c in classes]
    params = ParamSchema([ParamSpec("output_dir", "string", "")])
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs), params=params)


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
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache.parent))
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp))
        (tmp / ".complete").write_text(source)
        if cache.exists():
            shutil.rmtree(cache)
        publish(tmp, cache)
    conf = Model.load(str(cache)).flavors["python_function"]
    return cache / conf["data"]
