"""MLflow runs: a parent run per pipeline invocation, a nested run per stage (the tracking package
is the only one that imports mlflow).

Default store: SQLite at ``<project>/mlflow/mlflow.db``. ``MLFLOW_TRACKING_URI``
overrides it (another database, or an ``http://`` tracking server, which then
owns artifact storage). Artifacts of a SQLite store live beside the database
file, in ``<db folder>/artifacts`` (see :func:`default_artifact_root`), never
relative to the working directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import pandas as pd  # noqa: E402
from mlflow.entities import DatasetInput, InputTag  # noqa: E402

import mlflow  # noqa: E402
from medflow.core.keys import code_version
from medflow.core.loading import dump_yaml, flatten
from medflow.core.progress import log
from medflow.core.workspace import mlflow_dir, project_root  # noqa: E402
from medflow.tracking.stale import close_stale_runs, process_tags
from mlflow import MlflowClient  # noqa: E402

EXPERIMENT_KIND = "custom_model_development"  # MLflow 3.17's tag value for a model-training experiment
UI_QUERY = "workflowType=machine_learning"  # MLflow 3.17's UI opens GenAI pages without it (see ui_url)


def ui_url(base: str = "http://127.0.0.1:5000", experiment_id: str | None = None, run_id: str | None = None) -> str:
    """A link into the MLflow UI that opens the model-training views.

    MLflow 3.17 decides between its GenAI and machine-learning pages by a sidebar switch (default GenAI)
    and not by the experiment's ``mlflow.experimentKind`` tag; ``?workflowType=machine_learning`` sets
    the switch for that page load, so every link medflow prints carries it.
    """
    path = "/#/experiments"
    if experiment_id is not None:
        path += f"/{experiment_id}"
        path += f"/runs/{run_id}" if run_id else "/runs"
    return f"{base.rstrip('/')}{path}?{UI_QUERY}"


def default_uri() -> str:
    return f"sqlite:///{mlflow_dir() / 'mlflow.db'}"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def default_artifact_root(uri: str | None = None) -> str | None:
    """Where a store's artifacts go: ``artifacts/`` beside a SQLite file; None for a server (it decides)."""
    uri = uri or tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()


def ensure_store(uri: str) -> None:
    """Create a new SQLite store with its artifact root beside it, so even MLflow's own Default
    experiment (and ``mlflow run`` experiments) never put artifacts under the working directory."""
    if not uri.startswith("sqlite:///"):
        return
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    # Two runs starting at once on a new store would both run MLflow's schema migrations on it and
    # collide ("table _alembic_tmp_params already exists"): one creates it, the other waits.
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (db.exists() and db.stat().st_size):
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            SqlAlchemyStore(uri, default_artifact_root(uri))


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
        # "Creating initial MLflow database tables..." on a new store: MLflow's business, not the user's.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        ensure_store(self.uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        self.experiment_name: str | None = None
        self._parent_id: str | None = None
        self._experiment_id: str | None = None
        self._groups: list[str] = []  # nested group runs (a fold, a compared model), innermost last
        self._stale_checked = False

    def experiment_id(self, name: str) -> str:
        """The experiment's id, created as a model-training experiment (``mlflow.experimentKind``) if new."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.tags.get("mlflow.experimentKind") is None:  # made before medflow set it, or by MLflow
                self.client.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", EXPERIMENT_KIND)
            return exp.experiment_id
        root = default_artifact_root(self.uri)  # only local stores need a location; a server decides its own
        try:
            return self.client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None,
                                                 tags={"mlflow.experimentKind": EXPERIMENT_KIND})
        except mlflow.exceptions.MlflowException:  # another run created it since the lookup
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def close_stale(self) -> None:
        """Once per tracker: mark KILLED the runs that dead medflow processes of this host left RUNNING."""
        if self._stale_checked:
            return
        self._stale_checked = True
        closed = close_stale_runs(self.client)
        if closed:
            log(f"[tracking] marked {len(closed)} run(s) KILLED that a killed medflow process left RUNNING "
                f"({', '.join(closed[:3])}{', ...' if len(closed) > 3 else ''})")

    @property
    def review_run_id(self) -> str | None:
        """Where a reviewer looks first: the innermost group run (a fold, a model), else the pipeline run."""
        return self._groups[-1] if self._groups else self._parent_id

    @contextmanager
    def pipeline(self, cfg, config_path=None, profile=None, run_name=None, kind="pipeline"):
        self.experiment_name = cfg.tracking.experiment or cfg.name
        commit, dirty = git_commit()
        self.close_stale()
        tags = {"medflow.pipeline": cfg.name, "medflow.code_version": code_version("medflow.core.catalog"),
                "medflow.profile": ",".join([profile] if isinstance(profile, str) else profile or []),
                "medflow.kind": kind, "mlflow.source.type": "LOCAL", **process_tags()}
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
    def stage(self, name, key, path, run_name: str | None = None):
        tags = {"medflow.stage": name, "medflow.key": key, "medflow.stage_dir": str(path), **process_tags()}
        with mlflow.start_run(run_name=run_name or name, nested=True, experiment_id=self._experiment_id,
                              tags=tags) as run:
            yield run

    @contextmanager
    def group(self, name: str, tags: dict | None = None):
        """A nested run holding further stage runs: one fold of a cross-validation, one model of a comparison."""
        with mlflow.start_run(run_name=name, nested=True, experiment_id=self._experiment_id,
                              tags={**(tags or {}), **process_tags()}) as run:
            self._groups.append(run.info.run_id)
            try:
                yield run
            finally:
                self._groups.pop()

    def log_to(self, run_id: str, metrics: dict | None = None, artifacts=(), folder: str | None = None) -> None:
        """Metrics and files for a run that is not the active one (a parent after its children)."""
        for name, value in (metrics or {}).items():
            self.client.log_metric(run_id, name, float(value))
        for path in artifacts:
            self.client.log_artifact(run_id, str(path), folder)

    def log_plan(self, run_id: str, plan_file) -> None:
        """A ``medflow plan`` file on the pipeline run: the artifact ``plan/<file>`` and ``plan/<key>`` params."""
        from medflow.planning.plan import plan_params

        self.client.log_artifact(run_id, str(plan_file), "plan")
        for key, value in plan_params(plan_file).items():
            self.client.log_param(run_id, key, value)

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
        if output.manifest.get("params"):  # e.g. the train stage's plan (epochs x steps, and its budget)
            mlflow.log_params(output.manifest["params"])
        if self._parent_id:  # a stage's headline figures also go on the pipeline run, for the runs table
            for name, value in output.manifest.get("headline", {}).items():
                self.client.log_metric(self._parent_id, name, float(value))
        mlflow.log_artifact(str(output.file("manifest.json")), "stage")
        for name in output.manifest.get("artifacts", []):  # sub-folders are kept: val/ and test/ both exist
            mlflow.log_artifact(str(output.file(name)), "/".join(["stage", *Path(name).parts[:-1]]))
        if "dataset" in output.manifest and output.file("cases.csv").exists():
            self._log_dataset(output)
        self._log_review(output)

    def _log_review(self, output) -> None:
        """What a reviewer opens first: ``figures/<name>`` and the per-case table on the stage run and on the
        review run (fold, model or pipeline), and the headline-versus-baseline figures on the latter."""
        from medflow.review.spec import parent_metrics

        review = output.manifest.get("review", {})
        figures = {**output.manifest.get("figures", {}), **review.get("figures", {})}
        targets = [mlflow.active_run().info.run_id] + ([self.review_run_id] if self.review_run_id else [])
        with tempfile.TemporaryDirectory() as tmp:
            for name, rel in figures.items():
                if output.file(rel).exists():
                    shutil.copyfile(output.file(rel), Path(tmp) / name)  # logged under its review name
                    for run_id in targets:
                        self.client.log_artifact(run_id, str(Path(tmp) / name), "figures")
        if review.get("table") and output.file(review["table"]).exists():
            table = pd.read_csv(output.file(review["table"]))
            for run_id in targets:
                mlflow.log_table(table, artifact_file="tables/per_case.json", run_id=run_id)
        if review and self.review_run_id:
            for name, value in parent_metrics(review).items():
                self.client.log_metric(self.review_run_id, name, value)

    def log_report(self, page: str, run_id: str | None = None) -> None:
        """``report.html`` on the review run (shown inline by MLflow's artifact viewer)."""
        run_id = run_id or self.review_run_id
        if run_id:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "report.html"
                path.write_text(page, encoding="utf-8")
                self.client.log_artifact(run_id, str(path))

    def log_shard(self, output, seconds: float) -> None:
        """One shard's share of a stage: its counts and report (the stage's manifest comes with the merge)."""
        rep = output.report
        mlflow.set_tag("medflow.shard", f"{rep['index']}/{rep['count']}")
        mlflow.log_metrics({"cases": len(rep["cases"]), "quarantined": len(rep["quarantine"]), "seconds": seconds})
        mlflow.log_artifact(str(output.path / "shards" / f"{rep['index']}-of-{rep['count']}.json"), "stage/shards")

    def register_export(self, folder, info: dict) -> dict:
        """Log an export bundle as a model of the active stage run and register it (see tracking.registry)."""
        from medflow.tracking.registry import register_bundle

        return register_bundle(self.client, folder, info)

    def _log_dataset(self, output) -> None:
        """The ingested dataset as a run input: per-case fingerprint table, digest = ingest digest."""
        info = output.manifest["dataset"]
        table = pd.read_csv(output.file("cases.csv"), dtype=str, keep_default_na=False)
        with warnings.catch_warnings():  # mlflow registers the local source twice and warns about it
            warnings.simplefilter("ignore")
            ds = mlflow.data.from_pandas(table, source=info["root"], name=info["name"], digest=output.digest[:16],
                                         targets="target" if (table.get("target", "") != "").any() else None)
        entity = ds._to_mlflow_entity()
        for run_id in filter(None, (mlflow.active_run().info.run_id, self._parent_id)):
            context = "ingest" if run_id != self._parent_id else "pipeline"
            self.client.log_inputs(run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", context)])])


def _param(value) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


