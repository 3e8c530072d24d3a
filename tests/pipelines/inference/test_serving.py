"""Serving over loopback: ``mlflow models serve`` (started by hand, paths allowed by model_config) and
``medflow serve`` answer /invocations for every family."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medflow.core.loading import load_config
from medflow.core.runner import run_pipeline
from medflow.data.ct.ellipses import load_split
from medflow.inference.serving import gunzip_b64
from medflow.tracking.runs import MlflowTracker
from tests.helpers import make_cls_dataset, make_msd, write_pipeline
from tests.pipelines.stages.test_export import CLS, SEG, STAGES
from tests.pipelines.stages.test_reconstruction import PIPELINE as RECON

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One scoring server process on 127.0.0.1, stopped on exit."""

    def __init__(self, cmd: list[str], env: dict, port: int, log: Path):
        self.port, self.log = port, log
        self.proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def __enter__(self):
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1)
        raise AssertionError(f"server did not answer /ping: {self.log.read_text()[-2000:]}")

    def invoke(self, records: list[dict]) -> list[dict]:
        body = json.dumps({"dataframe_records": records}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/invocations", body,
                                     {"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=120).read())["predictions"]

    def __exit__(self, *exc):
        os.killpg(self.proc.pid, 15)
        self.proc.wait(timeout=30)


def _mlflow_serve(model: str, store: str, port: int, allow: Path) -> tuple[list[str], dict]:
    """MLflow's own server started by hand; ``allow`` reaches the model as a load-time model_config."""
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "MLFLOW_TRACKING_URI": store,
           "SERVING_MODEL_CONFIG": json.dumps({"allow_paths": [str(allow)]})}
    return [str(Path(bindir) / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
            "-h", "127.0.0.1", "-p", str(port), "-w", "1"], env


def _pipeline(tmp: Path, text: str, overrides=()) -> dict:
    path = tmp / "p.yaml"
    if not path.exists():
        path.write_text(text)
    results, _ = run_pipeline(load_config(path, list(overrides)), tracker=MlflowTracker())
    return {r.name: r for r in results}


def test_every_family_is_served_over_loopback(tmp_path, monkeypatch):
    store = os.environ["MLFLOW_TRACKING_URI"]
    for sub in ("seg", "c", "r"):
        (tmp_path / sub).mkdir()
    # segmentation: a NIfTI path on the server and the same file sent as base64 give the same labels
    seg_root = make_msd(tmp_path / "msd", n=6)
    write_pipeline(tmp_path / "seg" / "p.yaml", seg_root, stages=STAGES, extra=SEG)
    seg = _pipeline(tmp_path / "seg", "", ["split.test_fraction=0.34"])
    image = seg_root / "imagesTr" / "case_00.nii.gz"
    port = _free_port()
    with Server(*_mlflow_serve("models:/test@champion", store, port, tmp_path), port, tmp_path / "seg.log") as srv:
        rows = srv.invoke([{"path": str(image)}, {"nifti_b64": base64.b64encode(image.read_bytes()).decode()},
                           {"path": str(tmp_path / "absent.nii.gz")}])
    assert [r["error"] for r in rows[:2]] == ["", ""] and "missing file" in rows[2]["error"]
    maps = [nib.Nifti1Image.from_bytes(gunzip_b64(r["labels_nifti_b64"])) for r in rows[:2]]
    src = nib.load(str(image))
    assert all(m.shape == src.shape and np.allclose(m.affine, src.affine) for m in maps)
    assert np.array_equal(np.asarray(maps[0].dataobj), np.asarray(maps[1].dataobj))
    assert json.loads((Path(seg["export"].path) / "manifest.json").read_text())["registry"]["version"] == "1"

    # classification: probabilities per class, in a second registered model
    cls_root = make_cls_dataset(tmp_path / "cls", n=16)
    write_pipeline(tmp_path / "c" / "p.yaml", cls_root, layout="csv", stages=STAGES,
                   extra=CLS + "export: {registered_model: lesions}")
    _pipeline(tmp_path / "c", "", ["dataset.classes=[normal, lesion]"])
    port = _free_port()
    with Server(*_mlflow_serve("models:/lesions@champion", store, port, tmp_path), port, tmp_path / "cls.log") as srv:
        rows = srv.invoke([{"path": str(cls_root / "images" / f"s{i:02d}.nii.gz")} for i in range(4)])
    assert all(r["error"] == "" and r["class"] in ("normal", "lesion") for r in rows)
    assert all(abs(r["p_normal"] + r["p_lesion"] - 1) < 1e-5 for r in rows)

    # reconstruction, through `medflow serve`: a sinogram in the request body, an image back
    rec = _pipeline(tmp_path / "r", RECON.replace("evaluate_recon]", "evaluate_recon, export_recon]"))
    test = load_split(Path(rec["simulate"].path) / "data", "test")
    from medflow.cli.serve import serve_command

    port = _free_port()
    cmd, env = serve_command("models:/recon_test@champion", port)
    with Server(cmd, env, port, tmp_path / "rec.log") as srv:
        rows = srv.invoke([{"sinogram": test["sinogram"][0].tolist()}])
    import keras

    full = keras.saving.load_model(Path(rec["train_recon"].path) / "reconstructor.keras")
    expected = np.asarray(full.predict(test["sinogram"][:1], verbose=0))[0, ..., 0]
    assert rows[0]["error"] == "" and np.abs(np.array(rows[0]["image"]) - expected).max() < 1e-4
