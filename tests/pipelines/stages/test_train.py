"""Train stage on tiny datasets: augmentation from config, checkpoints, resume, MLflow logging."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

from medflow.core.loading import load_config
from medflow.core.runner import run_pipeline
from medflow.tracking.runs import MlflowTracker
from mlflow import MlflowClient
from tests.helpers import make_msd, write_pipeline

TRAIN = """
loader: {mode: 2d, patch_size: [16, 16], slice_axis: 2, samples_per_case: 2, batch_size: 4}
augment:
  seed: 3
  transforms:
    - {name: flip, p: 0.5}
    - {name: affine2d, p: 0.5, rotate: [-10, 10]}
    - {name: gamma, p: 0.5}
model: {name: unet2d, params: {depth: 2, filters: 4}}
train: {epochs: 3, learning_rate: 0.01, monitor: val_dice, val_samples_per_case: 1, preview_cases: 2}
"""


def _cfg(tmp_path, root, extra=TRAIN):
    return write_pipeline(tmp_path / "p.yaml", root, stages="[ingest, preprocess, split, train]", extra=extra)


def test_train_stage_logs_and_saves(tmp_path):
    root = make_msd(tmp_path / "msd", n=6)
    store = f"sqlite:///{tmp_path / 's.db'}"
    cfg = load_config(_cfg(tmp_path, root), ["split.test_fraction=0.0"])
    results, _ = run_pipeline(cfg, tracker=MlflowTracker(store))
    train = results[-1]
    folder = Path(train.path)
    assert train.state == "ran" and (folder / "model.keras").exists()
    model = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    assert model.output_shape == (None, 16, 16, 3)
    info = json.loads((folder / "train.json").read_text())
    assert info["classes"] == ["background", "cube", "slab"] and info["plan"]["spacing"] == [1.0, 1.0, 1.0]
    assert len(list(folder.glob("ckpt-*"))) == 2  # the newest checkpoint and the one before it
    client = MlflowClient(store)
    run = client.get_run(train.run_id)
    assert len(client.get_metric_history(train.run_id, "val_dice")) == 3
    assert run.data.metrics["epochs_run"] == 3
    assert run.data.params["plan.epochs"] == "3" and run.data.params["plan.reason"] == "train.epochs"
    assert "stage/train_plan.json" in [a.path for a in client.list_artifacts(train.run_id, "stage")]
    assert [a.path for a in client.list_artifacts(train.run_id, "augment")] == ["augment/preview.png"]
    again, _ = run_pipeline(cfg)
    assert again[-1].state == "skipped"


DRIVER = """
import os, sys
import medflow.training.trainer as tr
from medflow.core.loading import load_config
from medflow.core.runner import run_pipeline

stop_after = int(os.environ.get("STOP_AFTER", "-1"))
original = tr.StageCheckpoint.on_epoch_end
def dying(self, epoch, logs=None):
    original(self, epoch, logs)
    if epoch == stop_after:
        os._exit(9)  # as abrupt as a kill: no cleanup, no manifest
tr.StageCheckpoint.on_epoch_end = dying
run_pipeline(load_config(sys.argv[1], ["split.test_fraction=0.0"]), workers=1)
"""


def test_resume_after_interruption(tmp_path):
    root = make_msd(tmp_path / "msd", n=6)
    cfg_path = _cfg(tmp_path, root)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    base = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3]))

    def run(workspace, stop):
        env = dict(base, MEDFLOW_WORKSPACE=str(workspace), STOP_AFTER=str(stop))
        return subprocess.run([sys.executable, str(driver), str(cfg_path)], env=env, capture_output=True, text=True)

    assert run(tmp_path / "a", 0).returncode == 9
    (folder,) = (tmp_path / "a" / "stages" / "train").iterdir()
    assert json.loads((folder / "last.json").read_text())["epoch"] == 0 and not (folder / "manifest.json").exists()
    resumed = run(tmp_path / "a", -1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Epoch 2/3" in resumed.stdout and "Epoch 1/3" not in resumed.stdout  # continued, not restarted
    assert run(tmp_path / "b", -1).returncode == 0
    (clean,) = (tmp_path / "b" / "stages" / "train").iterdir()
    assert clean.name == folder.name  # same key
    def hist(folder):
        with open(folder / "history.csv") as f:
            rows = list(csv.DictReader(f))
        return [{k: float(v) for k, v in r.items() if k not in ("epoch_seconds", "train_samples_per_s")} for r in rows]

    a, b = hist(folder), hist(clean)
    assert len(a) == len(b) == 3 and a[0].keys() == b[0].keys() and "train_samples_per_s" not in a[0]
    assert {"loss", "val_dice", "learning_rate"} <= a[0].keys()
    for row_a, row_b in zip(a, b):  # same batches, same weights: the same losses (timings aside)
        np.testing.assert_allclose([row_a[k] for k in sorted(row_a)], [row_b[k] for k in sorted(row_a)], rtol=1e-4)
    with open(folder / "history.csv") as f:
        assert all(float(r["train_samples_per_s"]) > 0 for r in csv.DictReader(f))
