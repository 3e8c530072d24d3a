"""Shared by the fault suite: a tiny segmentation pipeline run as a user would run it (the `medflow`
CLI in a subprocess), output fingerprints that ignore only wall-clock figures, and the report rows
behind `make test-faults`'s table."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.helpers import make_msd, write_pipeline
from tests.pipelines.stages.test_export import SEG as EXPORT_SEG

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "preprocess", "split", "train", "evaluate", "export")
# test_export's tiny segmentation pipeline, one epoch longer: more checkpoints to be killed in
SEG = EXPORT_SEG.replace("epochs: 2,", "epochs: 3,")
WALL_CLOCK = ("seconds", "_per_s")


def make_pipeline(folder: Path, name: str = "test", cases: int = 6, extra: str = "") -> Path:
    """A 6-case MSD dataset and the six-stage segmentation pipeline on it (one case worker)."""
    root = make_msd(folder / f"msd-{name}", n=cases)
    path = write_pipeline(folder / f"{name}.yaml", root, stages=f"[{', '.join(STAGES)}]",
                          extra=SEG + extra)
    path.write_text(path.read_text().replace("name: test", f"name: {name}", 1).replace("test_fraction: 0.25",
                                                                                    "test_fraction: 0.34"))
    return path


def reference_run(tmp: Path) -> dict:
    """An uninterrupted run of :func:`make_pipeline` that counts its fault points.

    Returns:
        {"tmp", "pipeline", "ws", "store", "points" (stage -> kinds of its points, in order),
         "prints" (stage -> fingerprint of its folder)}.
    """
    pipeline = make_pipeline(tmp)
    ws, store = tmp / "ws", f"sqlite:///{tmp / 'store.db'}"
    count = tmp / "points.txt"
    done = medflow("run", pipeline, env=env_for(ws, store, MEDFLOW_FAULT_COUNT=str(count)))
    assert done.returncode == 0, done.stderr[-3000:]
    points = {s: [] for s in STAGES}
    for line in count.read_text().splitlines():
        stage, kind = line.split()
        points[stage].append(kind)
    return {"tmp": tmp, "pipeline": pipeline, "ws": ws, "store": store, "points": points,
            "prints": {s: fingerprint(stage_folder(ws, s)) for s in STAGES}}


def env_for(workspace: Path, store: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDFLOW_FAULT")}
    return {**env, "MEDFLOW_WORKSPACE": str(workspace), "MLFLOW_TRACKING_URI": store, **extra}


def medflow(*args, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medflow", *map(str, args)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def stage_folder(workspace: Path, stage: str) -> Path:
    """The one keyed folder of ``stage`` in ``workspace`` (exports live under exports/<pipeline>/)."""
    parent = workspace / "exports" if stage == "export" else workspace / "stages" / stage
    found = [p for p in parent.rglob("manifest.json") if not any(x.startswith(".") for x in p.parts)]
    folders = {p.parent for p in found} | {p for p in parent.glob("*/*" if stage == "export" else "*")
                                           if p.is_dir() and not p.name.startswith(".")}
    assert len(folders) == 1, (stage, sorted(map(str, folders)))
    return folders.pop()


def _json(value, drop=("model_uri",)):
    """JSON without wall-clock figures, ``drop`` keys (run-specific model ids), and case-file checksums
    (a case file may hold its own timing; its normalised content is compared instead)."""
    if isinstance(value, dict):
        skip = {"sha256", "size"} if {"sha256", "size", "file"} <= set(value) else set()
        return {k: _json(v, drop) for k, v in value.items()
                if not k.endswith(WALL_CLOCK) and k not in skip and k not in drop}
    if isinstance(value, list):
        return [_json(v, drop) for v in value]
    return value


def _onnx(path: Path) -> str:
    """An ONNX graph by its operators in order and its weights (node and tensor names are Keras's
    per-process counters, which differ between a process that trained and one that only exports)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    digest = hashlib.sha256(" ".join(n.op_type for n in graph.node).encode())
    for blob in sorted(numpy_helper.to_array(t).tobytes() for t in graph.initializer):
        digest.update(blob)
    return digest.hexdigest()


def _keras(path: Path) -> str:
    """A .keras file by its config and weights (the zip itself carries a save date)."""
    import h5py

    with zipfile.ZipFile(path) as zf:
        config = _json(json.loads(zf.read("config.json")), drop=("shared_object_id",))  # a Python id()
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        with h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as h5:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    digest.update(name.encode() + obj[()].tobytes())
            h5.visititems(visit)
    return digest.hexdigest()


def fingerprint(folder: Path) -> dict[str, str]:
    """{relative path: digest} of a stage folder, equal for two runs that produced the same results.

    Bytes for most files; JSON and CSV without wall-clock columns; .keras by config and weights;
    ONNX by operators and weights;
    a SavedModel by its presence (its bytes vary with serialisation order; the export stage's
    parity.json, compared by content, holds its outputs against Keras).
    """
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = str(path.relative_to(folder))
        if rel.startswith("saved_model/"):
            out[rel] = "present" if path.stat().st_size else "empty"
        elif path.suffix == ".onnx":
            out[rel] = _onnx(path)
        elif path.suffix == ".keras":
            out[rel] = _keras(path)
        elif path.suffix == ".json":
            text = json.dumps(_json(json.loads(path.read_text())), sort_keys=True)
            out[rel] = hashlib.sha256(text.encode()).hexdigest()
        elif path.suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(path.read_text())))
            clean = [{k: v for k, v in r.items() if not k.endswith(WALL_CLOCK)} for r in rows]
            out[rel] = hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders a write left behind (none may survive a finished stage)."""
    return sorted(str(p) for p in folder.rglob(".tmp-*"))


def running_runs(store: str) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(store)
    ids = [e.experiment_id for e in client.search_experiments()]
    return [r.info.run_id for r in client.search_runs(ids, "attributes.status = 'RUNNING'")] if ids else []


def record(area: str, tried: str, attempts: int, survived: int, figures: str = "") -> None:
    """One row of the fault table (appended to ``$MEDFLOW_FAULTS_REPORT``; see conftest)."""
    path = os.environ.get("MEDFLOW_FAULTS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"area": area, "tried": tried, "attempts": attempts, "survived": survived,
                                 "figures": figures}) + "\n")
